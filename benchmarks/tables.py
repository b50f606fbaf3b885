"""The README's benchmark tables, printed as markdown from the results files (the last line of
each case wins), so a table is never typed by hand.

    python benchmarks/tables.py gan_vs_vae
    python benchmarks/tables.py images
"""
from __future__ import annotations

import json
import sys
from _common import RESULTS


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (RESULTS / f"{name}.jsonl").read_text().splitlines() if x.strip()]


def gan_vs_vae() -> str:
    last = {r["case"]: r for r in _rows("gan_vs_vae")}
    out = ["| model | epochs in the budget | Parzen log-lik. (nats) | Fréchet distance | samples/s | "
           "final D(x) / D(G(z)) | samples |", "|---|---:|---:|---:|---:|---:|---|"]
    for case, r in last.items():
        name = (f"GAN, k = {r['k']}, {r['g_loss']}" if r["model"] == "gan"
                else f"VAE (IWAE net, test NLL {r['test_nll']:.1f} nats, K={r['nll_samples']})")
        game = f"{r['final_d_real']:.2f} / {r['final_d_fake']:.2f}" if "final_d_real" in r else ""
        out.append(f"| {name} | {r['epochs']} | {r['parzen_ll']:.0f} ± {r['parzen_se']:.1f} | {r['frechet']:.1f} | "
                   f"{r['samples_per_s']:,.0f} | {game} | ![](benchmarks/results/gan_vs_vae/{case}.png) |")
    return "\n".join(out)


def images() -> str:
    rows = _rows("images")
    out = ["| case | what | figure |", "|---|---|---:|"]
    for r in rows:
        if r["case"] == "load":
            out.append(f"| load, {r['run']} | {r['source']}: {r['images']:,} JPEGs to 32x32 | "
                       f"{r['images_per_s']:,.0f} images/s ({r['seconds']} s) |")
        elif r["case"] == "train":
            out.append(f"| train | conv VAE {'-'.join(map(str, r['channels']))}, batch {r['batch_size']}, "
                       f"32x32 RGB, {r['threads']} threads | {r['images_per_s']:,.0f} images/s |")
        else:
            out.append(f"| bits/dim | CIFAR-10 (4,000 images), {r['likelihood']}, {r['minutes']:g} min "
                       f"({r['epochs']} epochs) | {r['test_bpd']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print({"gan_vs_vae": gan_vs_vae, "images": images}[sys.argv[1]]())
