"""Honest likelihood evaluation: ELBO, importance-sampled NLL and bits/dim.

All metrics are nats per example. The importance-sampled estimate of log p(x) is
``logsumexp_k(log w_k) - log K`` with w_k = p(x, z_k) / q(z_k|x), z_k ~ q(z|x); it is a
stochastic lower bound on log p(x) that tightens as K grows (Burda et al. 2016), so the
reported ``nll`` is an upper bound in expectation. It is computed for a whole batch at once
and for as many samples as fit a memory budget at a time, never one point at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..distributions import DiagonalGaussian
from ..errors import VaelabError
from ..nets import full_precision
from ..models.base import HasLikelihood

# elements of the decoder's output per chunk of importance samples: ~8 MB, small enough for the
# elementwise passes over it to stay in cache (1.20x faster eager than 2^23 for the MLP VAE on
# 1,000 images, K = 1000, 2 threads; 1.05x compiled; 2^20 was slower again)
CHUNK_ELEMENTS = 1 << 21
# compiled, the passes over a chunk are fused, so a larger chunk keeps the matrix products long:
# 6.63 us a sample at 2^23 against 7.13 at 2^21 (MLP VAE, 500 images, K = 1000, 2 threads, AVX2)
COMPILED_CHUNK_ELEMENTS = 1 << 23
# images whose importance samples are drawn together, from a seed of their own
# (distributed.block_seed): the draws an image gets do not depend on --batch-size or on how many
# processes share the split, so neither changes the figure. 100 is the default --batch-size: one
# process evaluates in the batches it did before.
NLL_BLOCK = 100


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Nats per example -> bits per dimension. Meaningful for discrete likelihoods only."""
    return nll_nats / (dims * math.log(2))


def fixed_prior(model: HasLikelihood):
    """A context in which ``model``'s prior is computed once, where it has one to compute (the
    VampPrior's mixture of its posteriors at the pseudo-inputs: its ``fixed_prior``), and not
    again for every chunk of importance samples; else nothing to hold."""
    hold = getattr(model, "fixed_prior", None)
    return hold() if hold is not None else contextlib.nullcontext()


def _chunk(model: HasLikelihood, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, c: int,
           y: torch.Tensor | None = None):
    """logsumexp and sum over c importance samples of the log-weights: [B] each (``y``: the
    labels a conditional model's likelihood is of x given)."""
    q = DiagonalGaussian(mu, logvar)
    lw = model.log_weights(x, c, q) if y is None else model.log_weights(x, c, q, y=y)  # [c, B]
    return torch.logsumexp(lw, 0), lw.sum(0)


@functools.cache
def _compiled_chunk():
    """:func:`_chunk` through torch.compile, made on first use (importing vaelab stays cheap).
    The decoder's log-probability, the prior and posterior terms and both reductions fuse into a
    few loops over the samples instead of a pass each. ``fallback_random``: its normal draws are
    eager's own, so with the same seed and the same chunks both paths draw the same samples and
    their estimates differ only by rounding (the compiled path's larger chunks draw other
    normals: the same distribution)."""
    return torch.compile(_chunk, dynamic=True, options={"fallback_random": True})


def _encode(model: HasLikelihood, x: torch.Tensor, y: torch.Tensor | None):
    """q(z|x), or q(z|x,y) for a conditional model's labels ``y``."""
    return model.encode(x) if y is None else model.encode(x, y)


def chunk_size(model: HasLikelihood, x: torch.Tensor, k: int, elements: int | None = None) -> int:
    """Importance samples per chunk: as many as keep the decoder's output for the batch ``x``
    within ``elements`` (default :data:`CHUNK_ELEMENTS`; at least 1, at most ``k``). The decoder emits
    ``decoder_params`` numbers per sub-pixel (15 for a mixture of 5 logistics: weight, location
    and scale of each), not one."""
    per_draw = x.numel() * model.decoder_params  # one z for the batch
    return max(1, min(k, (elements or CHUNK_ELEMENTS) // max(1, per_draw)))


def _dynamo_errors() -> tuple[type, ...]:
    from torch._dynamo.exc import TorchDynamoException
    return (TorchDynamoException,)


def bf16_units() -> str | None:
    """The CPU's native bf16 matrix units, read from its flags at run time: ``"AMX"`` (AMX
    tiles, Sapphire Rapids on), ``"AVX512-BF16"``, or None (bf16 products are emulated there,
    measured at about a quarter of fp32's speed, so the fp32 path is the fast one)."""
    cpu = getattr(torch, "cpu", None)
    try:
        if cpu._is_amx_tile_supported():
            return "AMX"
        if cpu._is_avx512_bf16_supported():
            return "AVX512-BF16"
    except (AttributeError, RuntimeError):
        pass
    return None


_COMPILE_FAILED: set[type] = set()  # models whose chunk torch.compile could not take, evaluated eagerly

# importance samples (images x K) from which compiling the chunk pays for its one-off compile
# (seconds to tens of seconds): a K = 1000 evaluation of 10,000 test images is 10^7
COMPILE_MIN_SAMPLES = 2_000_000


@dataclass(frozen=True)
class NLLPath:
    """How the importance-sampled NLL is computed: the decoder's matrix products in ``precision``
    (bf16 on CPUs with bf16 units, with the log-likelihoods, the weights and the logsumexp in
    fp32), the chunk ``compiled`` or eager, and why."""
    precision: str = "fp32"
    compiled: bool = False
    reason: str = ""

    def describe(self) -> str:
        how = f"{self.precision} products{', compiled' if self.compiled else ', eager'}"
        return f"{how} ({self.reason})" if self.reason else how


def choose_path(device: torch.device | str, samples: int, precision: str = "auto",
                compile: bool | None = None) -> NLLPath:
    """The NLL path for ``samples`` importance samples (images x K) on ``device``.

    ``precision``: ``"auto"`` takes bf16 where the CPU has bf16 units (:func:`bf16_units`) and
    fp32 elsewhere (CUDA included); ``"fp32"``/``"bf16"`` force one. ``compile``: None compiles
    when there are at least :data:`COMPILE_MIN_SAMPLES` samples."""
    if precision not in ("auto", "fp32", "bf16"):
        raise VaelabError(f"--nll-precision must be auto, fp32 or bf16, got {precision!r}.")
    device = torch.device(device)
    units = bf16_units() if device.type == "cpu" else None
    if precision == "auto":
        precision = "bf16" if units else "fp32"
        why = f"this CPU has {units} bf16 units" if units else (
            "no bf16 units on this CPU" if device.type == "cpu" else f"on {device.type}")
    else:
        why = f"--nll-precision {precision}"
        if precision == "bf16" and device.type == "cpu" and not units:
            why += ", emulated: this CPU has no bf16 units"
    if compile is None:
        compile = samples >= COMPILE_MIN_SAMPLES
        why += f"; {'compiled' if compile else 'eager'} for {samples:,} samples"
    return NLLPath(precision, bool(compile), why)


def _autocast(path: NLLPath, x: torch.Tensor):
    if path.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=torch.bfloat16)


@torch.no_grad()
def log_likelihood_is(model: HasLikelihood, x: torch.Tensor, k: int, q=None, compile: bool = False,
                      path: NLLPath | None = None, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled log p(x) and the K-sample mean of log w (an ELBO estimate).

    Args:
        model: a VAE (``encode``, ``log_weights``).
        x: a batch, [B, *shape].
        k: number of importance samples K.
        q: the posterior q(z|x) if the caller already has it (one encoder pass per image).
        compile: run each chunk through ``torch.compile`` (a one-off compile of seconds).
        path: an :class:`NLLPath` (overrides ``compile``): bf16 decoder products under autocast
            (the decoder's outputs come back in fp32, so the log-probabilities, the weights and
            the logsumexp are fp32) and/or the compiled chunk.
        y: the labels [B] of a conditional model (``conditional``: its likelihood is log p(x|y),
            its posterior q(z|x,y)); None for any other.
    Returns:
        (log_px [B], elbo [B]).
    """
    path = path or NLLPath("fp32", compile)
    if path.compiled and type(model) in _COMPILE_FAILED:
        path = dataclasses.replace(path, compiled=False)
    # the prior computed once for all the chunks (inside evaluate_likelihood, which holds it for the
    # whole split, this holds nothing more)
    with fixed_prior(model):
        q = _encode(model, x, y) if q is None else q
        chunk = chunk_size(model, x, k, COMPILED_CHUNK_ELEMENTS if path.compiled else None)
        lse, total = [], 0.0
        fn = _compiled_chunk() if path.compiled else _chunk
        for start in range(0, k, chunk):
            with _autocast(path, x):
                try:
                    chunk_lse, chunk_sum = fn(model, x, q.mu, q.logvar, min(chunk, k - start), y)
                except Exception as e:
                    if fn is _chunk or not isinstance(e, _dynamo_errors()):
                        raise
                    # a model (or a machine) torch.compile cannot take: eager from here on
                    _COMPILE_FAILED.add(type(model))
                    path = dataclasses.replace(path, compiled=False)
                    fn = _chunk
                    chunk_lse, chunk_sum = fn(model, x, q.mu, q.logvar, min(chunk, k - start), y)
            lse.append(full_precision(chunk_lse))
            total += full_precision(chunk_sum)
    log_px = torch.logsumexp(torch.stack(lse), 0) - math.log(k)
    return log_px, total / k


@torch.no_grad()
def evaluate_likelihood(model: HasLikelihood, x: torch.Tensor, k: int, discrete: bool = True,
                        progress: bool = False, offset: float = 0.0, compile: bool | None = None,
                        precision: str = "auto", seed: int | None = 0, log=None,
                        y: torch.Tensor | None = None) -> dict:
    """ELBO, NLL (K importance samples) and bits/dim over a whole split.

    The split is taken in blocks of :data:`NLL_BLOCK` images, each with its own seed, and under
    torchrun the ranks share the blocks: each computes its own, and the blocks' sums (float64)
    are gathered and added in block order on every rank, so every rank returns the figure one
    process computes, to the last bit.

    Args:
        x: the split's inputs as the model sees them, [N, *shape] (on the model's device; the
            whole split on every rank).
        discrete: whether the NLL is a code length of the data: p(x|z) a probability mass
            (binary data with a Bernoulli, a discretized logistic), or a density on dequantized
            pixels with ``offset`` = D log(levels) added. bits/dim is reported only then,
            as ``None`` otherwise.
        offset: nats added to the NLL (and taken from the ELBO) per example.
        compile, precision: the path (:func:`choose_path`): by default compiled for large
            evaluations, bf16 products where the CPU has bf16 units.
        seed: the importance samples' seed (the global RNG is left as it was); None draws from
            the global RNG (then the figure depends on the blocks' order and the ranks).
        log: called with one line naming the path taken.
        y: the split's labels [N], for a conditional model (its NLL is -log p(x|y)); else None.
    Returns:
        dict with ``elbo`` (mean log-weight, <= -nll), ``nll`` (positive), ``bpd``,
        ``kl`` (KL(q || p): closed form against an N(0, I) prior, else the model's one-sample
        estimate), ``n``, ``k`` and ``nll_path``.
    """
    model.eval()
    n = x.shape[0]
    if getattr(model, "conditional", False) and y is None:
        raise VaelabError(f"the likelihood of a {type(model).__name__} is of images given their labels, and the "
                          "split has none.")
    y = y if getattr(model, "conditional", False) else None
    path = choose_path(x.device, n * k, precision, compile)
    if path.compiled and type(model) in _COMPILE_FAILED:
        path = dataclasses.replace(path, compiled=False, reason=path.reason + "; torch.compile failed before")
    log = log if distributed.is_main() else None
    if log:
        log(f"NLL path: {path.describe()}")
    devices = [x.device] if x.device.type == "cuda" else []
    sums = []  # (-log p(x), mean log w, KL) summed over each of this rank's blocks
    # the prior computed once for the whole split (it draws nothing: the seeds are as they were)
    with torch.random.fork_rng(devices, enabled=seed is not None), fixed_prior(model):
        for b in tqdm(distributed.blocks(n, NLL_BLOCK), desc=f"NLL (K={k})", leave=False,
                      file=sys.stderr, disable=None if progress and distributed.is_main() else True):
            if seed is not None:
                distributed.seed_block(seed, b, x.device)
            xb = x[b * NLL_BLOCK:(b + 1) * NLL_BLOCK]
            yb = None if y is None else y[b * NLL_BLOCK:(b + 1) * NLL_BLOCK]
            q = _encode(model, xb, yb)  # one encoder pass per image, in fp32
            log_px, elbo = log_likelihood_is(model, xb, k, q, path=path, y=yb)
            sums.append((-log_px.sum().item(), elbo.sum().item(), model.kl(xb, q).sum().item()))
    if path.compiled and type(model) in _COMPILE_FAILED:  # it failed during this evaluation
        path = dataclasses.replace(path, compiled=False, reason=path.reason + "; torch.compile failed: eager")
        if log:
            log(f"NLL path: {path.describe()}")
    # every block's sums in block order, on every rank: the additions one process makes
    nll_sum, elbo_sum, kl_sum = (sum(col) for col in zip(*distributed.gather(sums)))
    nll = nll_sum / n + offset
    return {"elbo": elbo_sum / n - offset, "nll": nll, "bpd": bits_per_dim(nll, x[0].numel()) if discrete else None,
            "kl": kl_sum / n, "n": n, "k": k, "nll_path": path.describe()}
