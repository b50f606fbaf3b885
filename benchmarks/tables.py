"""The benchmark tables of docs/benchmarks.md, printed as markdown from the results files (the last line of
each case wins), so a table is never typed by hand.

    python benchmarks/tables.py gan_vs_vae
    python benchmarks/tables.py images
    python benchmarks/tables.py representations
    python benchmarks/tables.py semisupervised     # also draws docs/img/semisupervised.png
    python benchmarks/tables.py reliability
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
                   f"{r['samples_per_s']:,.0f} | {game} | ![](../benchmarks/results/gan_vs_vae/{case}.png) |")
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


NAMES = {"pca": "PCA", "ae": "AE", "sparse-ae": "sparse AE (`--l1 1e-3`)", "dae": "DAE (`mask:0.25`)", "vae": "VAE"}
# the anchor: Kingma et al. 2014, Table 1, M1 + TSVM (a VAE's 50-D codes, a transductive SVM), from its test errors
M1 = {100: 100 - 11.82, 1000: 100 - 4.24}


def representations() -> str:
    """One table per (dataset, code size): a row per model, means over the label seeds; where
    several lines give the same (case, labels), their fields merge and the last one wins."""
    cells: dict = {}
    for r in _rows("representations"):
        key = (r["data"], r["latent_dim"], r["model"], r.get("labels"))
        cells.setdefault(key, {}).update(r)
    pct = lambda r, k: f"{100 * r[k]:.1f}%" if k in r else ""  # noqa: E731
    out = []
    for data, d in dict.fromkeys((k[0], k[1]) for k in cells):
        title = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(data, data)
        out += [f"| {title}, d = {d} | test MSE/pixel | probe 100 | probe 1,000 | probe all | fine-tune / scratch 100 "
                f"| fine-tune / scratch 1,000 | fine-tune / scratch all | PSNR gain |", "|---|" + "---:|" * 8]
        for model in NAMES:
            if (data, d, model, None) not in cells:
                continue
            m, at = cells[(data, d, model, None)], {n: cells.get((data, d, model, n), {}) for n in (100, 1000, "all")}
            tuned = [f"{pct(at[n], 'finetune')} / {pct(at[n], 'scratch')}" if "finetune" in at[n] else ""
                     for n in at]
            gain = (f"+{m['psnr_gain']:.2f} dB ({m['psnr_corrupted']:.2f} → {m['psnr_denoised']:.2f})"
                    if "psnr_gain" in m else "")
            out.append(f"| {NAMES[model]} | {m['mse']:.4f} | " + " | ".join(pct(at[n], "probe") for n in at) +
                       " | " + " | ".join(tuned) + f" | {gain} |")
        if (data, d) == ("mnist", 10):
            out.append(f"| M1 + TSVM (Kingma et al. 2014, d = 50) |  | {M1[100]:.1f}% | {M1[1000]:.1f}% |  |  |  |  |  |")
        out.append("")
    return "\n".join(out)


def semisupervised() -> str:
    """Test error (%) by model, budget and labels, mean ± sd over the seeds (the last line of each
    model, budget, labels and seed wins), beside Kingma et al. 2014's Table 1; and the plot of
    error against labels. A model trained for two budgets (the grid's 10 minutes and the long run)
    gets a row for each."""
    import statistics
    from semisupervised import PAPER
    def name(r):  # the model, its labelled weighting where not the paper's
        return r["model"] + (" balanced" if r.get("labelled_weight", "paper") != "paper" else "")
    last = {(name(r), r["budget_minutes"], r["labels"], r["seed"]): r for r in _rows("semisupervised")}
    cells: dict[tuple[str, int], list[dict]] = {}
    for (model, budget, n, _), r in last.items():
        cells.setdefault((f"{model}, {budget:g} min", n), []).append(r)
    labels = sorted({n for _, n in cells})
    order = ("m2", "m1+m2", "probe", "finetune", "supervised")
    models = sorted({k[0] for k in cells}, key=lambda m: (order.index(m.split(",")[0].split(" ")[0]), m.split(",")[0],
                                                           float(m.split(", ")[1][:-4])))

    def cell(model, n):
        rows = cells.get((model, n))
        if not rows:
            return "—"
        errs = [100 * r["test_error"] for r in rows]
        sd = f" ± {statistics.stdev(errs):.2f}" if len(errs) > 1 else ""
        minutes = statistics.mean(r["minutes"] for r in rows)
        return f"{statistics.mean(errs):.2f}{sd} ({len(errs)} seed{'s' if len(errs) > 1 else ''}, {minutes:.0f} min)"
    head = "| model, budget | " + " | ".join(f"{n:,} labels" for n in labels) + " |"
    out = [head, "|---|" + "---:|" * len(labels)]
    for m in models:
        out.append(f"| vaelab {m} | " + " | ".join(cell(m, n) for n in labels) + " |")
    for m, figures in PAPER.items():
        out.append(f"| paper {m.upper()} | " + " | ".join(f"{figures[n]:.2f}" if n in figures else "—"
                                                           for n in labels) + " |")
    _plot(cells, models, PAPER)
    return "\n".join(out)


def reliability() -> str:
    """docs/reliability.md's tables: the fuzzing per parser, the kills per model (in one process and
    under torchrun) and the full disk per command, the last line of each winning."""
    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items()))
    fuzz = {r["parser"]: r for r in _rows("fuzz")}
    out = ["| parser | inputs | failures | peak MB | seconds | outcomes |", "|---|---:|---:|---:|---:|---|"]
    out += [f"| `{p}` | {r['inputs']:,} | {r['failures']} | {r['peak_mb']} | {r['seconds']:.0f} | "
            f"{counts(r['outcomes'])} |" for p, r in sorted(fuzz.items())]
    faults = {(r["fault"], r.get("model") or r.get("tested")): r for r in _rows("faults")}
    for ranks, title in ((1, "Kills, one process"), (2, "Kills under torchrun, 2 ranks (either rank killed)")):
        kills = sorted((r for (kind, _), r in faults.items() if kind == "sigkill" and r.get("ranks", 1) == ranks),
                       key=lambda r: r["model"])
        out += ["", f"{title}:", "", "| model | kills | survived | runs | equal | clean | what the kills hit | seconds |",
                "|---|---:|---:|---:|---:|---:|---|---:|"]
        out += [f"| {r['model'].split(' (')[0]} | {r['injected']} | {r['survived']} | {r['runs']} | {r['equal']} | "
                f"{r['clean']} | {counts(r['kinds'])} | {r['seconds']:.0f} |" for r in kills]
    full = sorted((r for (kind, _), r in faults.items() if kind == "disk_full"), key=lambda r: r["tested"])
    out += ["", "| command | cases | survived | refused | files named | failures | seconds |",
            "|---|---:|---:|---:|---|---:|---:|"]
    out += [f"| `{r['tested']}` | {r['cases']} | {r['survived']} | {r['refused']} | {counts(r['named'])} | "
            f"{len(r['failures'])} | {r['seconds']:.0f} |" for r in full]
    return "\n".join(out)


def _plot(cells, models, paper) -> None:
    import statistics

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        ns = sorted(n for mm, n in cells if mm == m)
        errs = [[100 * r["test_error"] for r in cells[(m, n)]] for n in ns]
        ax.errorbar(ns, [statistics.mean(e) for e in errs], yerr=[statistics.stdev(e) if len(e) > 1 else 0 for e in errs],
                    marker="o", capsize=3, label=f"vaelab {m}")
    for m, figures in paper.items():
        ns = sorted(figures)
        ax.plot(ns, [figures[n] for n in ns], linestyle="--", marker="x", label=f"paper {m.upper()}")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test error (%)")
    ax.set_title("MNIST with a few labels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS.parent.parent / "docs" / "img" / "semisupervised.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    print({"gan_vs_vae": gan_vs_vae, "images": images, "representations": representations,
           "semisupervised": semisupervised, "reliability": reliability}[sys.argv[1]]())
