"""How the VampPrior starts on MNIST, with and without the two choices that let it train from the
first epoch: the codes measured from a fixed image's code, mu(x0), and the pseudo-inputs started
at training images (``--pseudo-init data``). Beside it, the VAE with the same net and minibatches.

Each case trains the model's own objective (the ELBO with the KL at one draw) for ``--steps``
minibatches of 100 dynamically binarized images drawn from the first 20,000 MNIST training
images, Adam 1e-3, seed 0 (the same minibatches for every case), and reports, every 50 steps
and at the end: the minibatch's loss, its KL term, the spread of the posterior means over the
minibatch, the mean posterior std, |the minibatch's mean code| (where the codes sit) and the
fraction of the decoder's first units saturated (|pre-activation| > 2 at a posterior draw).
Cases: ``vae``; ``vamp`` (as vaelab trains it) and ``vamp-grey`` (``--pseudo-init grey``); and
two origins that are not fixed, to show why x0 is: ``vamp-uncentred`` (the encoder's raw means,
vaelab before the fix), also with ``-grey``, and ``vamp-pseudo-centred`` (the codes measured from
the mean code of the learned pseudo-inputs, an origin the optimizer can move).

    python benchmarks/vamp_start.py --data-dir ../shared/data
    python benchmarks/vamp_start.py --activation relu --data-dir ../shared/data

One JSON line per case in ``benchmarks/results/vamp_start.jsonl``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from _common import RESULTS, emit, machine, shown  # noqa: E402

CASES = ("vae", "vamp", "vamp-grey", "vamp-pseudo-centred", "vamp-uncentred", "vamp-uncentred-grey")
N_IMAGES, BATCH, LR = 20_000, 100, 1e-3


def build(case: str, activation: str, x_uint8: torch.Tensor, levels: int):
    from vaelab.distributions import DiagonalGaussian
    from vaelab.models.vae import VAE, VAEConfig
    from vaelab.models.vamp import VampConfig, VampPrior
    from vaelab.training.trainer import start_from_data

    class Uncentred(VampPrior):
        """The VampPrior as it was: the encoder's raw means, for posterior and prior alike."""
        def encode(self, x):
            return VAE.encode(self, x)

        def mixture(self) -> DiagonalGaussian:
            return VAE.encode(self, F.hardtanh(self.pseudo_params, 0.0, 1.0))

    class PseudoCentred(VampPrior):
        """The codes measured from the mean code of the pseudo-inputs, which learn."""
        def _mixture_and_origin(self):
            raw = VAE.encode(self, F.hardtanh(self.pseudo_params, 0.0, 1.0))
            c = raw.mu.mean(0)
            return DiagonalGaussian(raw.mu - c, raw.logvar), c

    net = dict(arch="mlp", hidden=(200, 200), activation=activation, latent_dim=50, likelihood="bernoulli",
               shape=(1, 28, 28))
    torch.manual_seed(0)
    if case == "vae":
        return VAE(VAEConfig(**net))
    init = "grey" if case.endswith("grey") else "data"
    cls = Uncentred if "uncentred" in case else PseudoCentred if "pseudo-centred" in case else VampPrior
    model = cls(VampConfig(**net, pseudo_init=init))
    start_from_data(model, x_uint8, levels, 0, torch.device("cpu"))  # as a fresh run with --seed 0 does
    return model


def run_case(case: str, a, x_uint8: torch.Tensor, levels: int) -> dict:
    from vaelab.data.transforms import eval_inputs
    x_all = eval_inputs(x_uint8, levels, "none")
    model = build(case, a.activation, x_uint8, levels)
    opt = torch.optim.Adam(model.parameters(), LR)
    g = torch.Generator().manual_seed(1)
    trace, t0 = [], time.perf_counter()
    for s in range(a.steps):
        idx = torch.randint(len(x_all), (BATCH,), generator=g)
        x = (torch.rand(BATCH, 1, 28, 28, generator=g) < x_all[idx]).float()
        loss, met = model.objective(x, torch.tensor(1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % 50 == 0 or s == a.steps - 1:
            with torch.no_grad():
                q = model.encode(x)
                pre = model.decoder.net[0](q.rsample())
            trace.append({"step": s + 1, "loss": round(loss.item(), 2), "kl": round(met["kl"].item(), 3),
                          "mu_spread": round(q.mu.std(0).mean().item(), 4), "post_std": round(q.std.mean().item(), 4),
                          "mean_code": round(q.mu.mean(0).abs().mean().item(), 3),
                          "saturated": round(pre.abs().gt(2).float().mean().item(), 3)})
    last10 = [t["loss"] for t in trace[-10:]]
    return {"case": case, "activation": a.activation, "steps": a.steps, "final_loss": trace[-1]["loss"],
            "mean_loss_last_10_reports": round(sum(last10) / len(last10), 2), "final_kl": trace[-1]["kl"],
            "seconds": round(time.perf_counter() - t0, 1), "trace": trace}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--activation", default="tanh", choices=("tanh", "relu"))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(RESULTS / "vamp_start.jsonl"))
    a = ap.parse_args()
    cases = a.cases.split(",")
    for c in cases:
        if c not in CASES:
            ap.error(f"--cases: unknown case {c!r}; expected some of {', '.join(CASES)}")
    torch.set_num_threads(a.threads)
    from vaelab.data.datasets import load_dataset
    ds = load_dataset("mnist", a.data_dir)
    for c in cases:
        row = {"benchmark": "vamp_start", **machine(a.threads), **run_case(c, a, ds.train.x[:N_IMAGES], ds.spec.levels),
               "command": shown(["python", "benchmarks/vamp_start.py", *sys.argv[1:]])}
        emit(a.results, row)


if __name__ == "__main__":
    main()
