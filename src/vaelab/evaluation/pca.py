"""The lecture's check that a linear autoencoder is PCA.

Under an L2 loss the optimum of ``--arch linear`` (one affine map each way) is not unique: any
invertible mixing of the code is as good. What is unique is the decoder's column space, which is
the span of the top-d principal directions, and the reconstruction error, which is PCA's. So the
report compares subspaces (principal angles) and errors, never the weights themselves.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA

from ..errors import VaelabError
from ..models.base import Encoder


def _as_matrix(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"principal_angles needs 2-D matrices [D, d], got shape {a.shape}")
    return a


def _orth(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column space of a [D, d]: [D, rank].

    By SVD rather than QR so that a rank-deficient matrix (e.g. a collapsed decoder) yields a
    basis of its actual span instead of arbitrary extra columns."""
    if a.size == 0:
        return np.zeros((a.shape[0], 0))
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    tol = max(a.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    return u[:, : int((s > tol).sum())]


def principal_angles(A, B) -> np.ndarray:
    """Principal angles between the column spaces of A [D, d1] and B [D, d2], in degrees, ascending.

    There are min(rank A, rank B) of them; 0 means a shared direction, 90 an orthogonal one.

    The cosines are the singular values of Q_A^T Q_B. Near 0 degrees arccos loses half the digits
    (cos = 1 - t^2/2), so angles below 45 degrees are taken from the sines instead: the singular
    values of the part of the smaller basis outside the larger span (Knyazev & Argentati 2002).
    """
    a, b = _as_matrix(A), _as_matrix(B)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"principal_angles needs matrices with the same number of rows, got {a.shape} and {b.shape}")
    qa, qb = _orth(a), _orth(b)
    k = min(qa.shape[1], qb.shape[1])
    if k == 0:
        return np.zeros(0)
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)[:k]          # descending
    from_cos = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))      # ascending
    big, small = (qa, qb) if qa.shape[1] >= qb.shape[1] else (qb, qa)
    residual = small - big @ (big.T @ small)                        # [D, k]
    sin = np.sort(np.linalg.svd(residual, compute_uv=False))       # ascending
    from_sin = np.degrees(np.arcsin(np.clip(sin, -1.0, 1.0)))      # ascending
    return np.sort(np.where(from_cos < 45.0, from_sin, from_cos))


def _flat(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] == 0:
        raise VaelabError(f"pca_report needs a non-empty {what} set, got shape {x.shape}.")
    return x.reshape(x.shape[0], -1)


@torch.no_grad()
def pca_report(model: Encoder, x_train, x_eval) -> dict:
    """Compare a linear autoencoder with PCA fitted on the same training data.

    Args:
        model: an :class:`~vaelab.models.ae.AE` with ``cfg.arch == "linear"`` (trained with the
            l2 loss for the comparison to be meaningful).
        x_train: the data PCA is fitted on, [N, *shape] (tensor or array).
        x_eval: the data both reconstruct, [M, *shape].

    Returns:
        ``angles_deg`` (ascending principal angles between the decoder's weight columns and
        PCA's top-d components; a decoder of rank r < d counts its d - r missing directions as
        90), ``max_angle_deg``, ``ae_mse`` and ``pca_mse`` (per-pixel mean squared error on
        x_eval), ``mse_ratio`` = ae_mse / pca_mse (1 when both are 0, inf when only PCA's is)
        and ``d``. Plain Python numbers, ready for JSON.
    """
    cfg = model.cfg
    if getattr(cfg, "arch", None) != "linear":
        raise VaelabError(f"The PCA comparison needs a linear autoencoder (--arch linear), "
                          f"got --arch {getattr(cfg, 'arch', None)}.")
    d = int(cfg.latent_dim)
    xt, xe = _flat(x_train, "training"), _flat(x_eval, "evaluation")
    n, dim = xt.shape
    expected = int(np.prod(cfg.shape))
    if dim != expected or xe.shape[1] != expected:
        raise VaelabError(f"The model takes images of shape {tuple(cfg.shape)} ({expected} values), "
                          f"but the data has {dim} (training) and {xe.shape[1]} (evaluation) values.")
    if d > min(n, dim):
        raise VaelabError(f"PCA with --latent-dim {d} needs at least {d} training images and {d} pixels, "
                          f"got {n} images of {dim} pixels.")

    # "full" is the exact LAPACK SVD: deterministic, unlike the randomized solver "auto" may pick.
    pca = PCA(n_components=d, svd_solver="full").fit(xt)
    pca_rec = pca.inverse_transform(pca.transform(xe))              # [M, D]
    pca_mse = float(np.mean((pca_rec - xe) ** 2))

    p = next(model.parameters())
    x_in = torch.as_tensor(x_eval).to(device=p.device, dtype=p.dtype)
    ae_rec = torch.cat([model.reconstruct(chunk) for chunk in x_in.split(4096)])
    ae_mse = float(np.mean((ae_rec.double().cpu().numpy().reshape(xe.shape) - xe) ** 2))

    weight = model.decoder.net[0].weight                            # [D, d]: z -> pixels
    angles = principal_angles(weight, pca.components_.T).tolist()   # components_: [d, D]
    angles += [90.0] * (d - len(angles))
    if pca_mse > 0:
        ratio = ae_mse / pca_mse
    else:
        ratio = 1.0 if ae_mse == 0 else float("inf")
    return {"angles_deg": angles, "max_angle_deg": max(angles), "ae_mse": ae_mse,
            "pca_mse": pca_mse, "mse_ratio": ratio, "d": d}
