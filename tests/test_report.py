"""report.html, vaelab report and vaelab compare: what they show, checked in the files and in a
real browser (headless Chromium: every image loads, no console error, no network request)."""
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import vaelab
from vaelab.cli import main
from vaelab.images import grid_size, label_margins
from vaelab.report.compare import compare
from vaelab.rundir import FIGURES, PICTURES, REPORT

from browser import Browser, require_browser

TINY = dict(data="digits", hidden=(32,), latent_dim=2, batch_size=64, epochs=2, nll_samples=5, progress=False,
            lr=3e-3)
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished VAE (2-D latent: every picture), a WAE, a GAN and an autoencoder on the digits."""
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for name, over in (("vae", {}), ("wae", {"model": "wae"}), ("gan", {"model": "gan"}), ("ae", {"model": "ae"})):
        out[name] = vaelab.train(vaelab.make_config(**{**TINY, **over}, out=str(d / name)), **QUIET)
    return out


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with Browser() as b:
        yield b


def _html(run: Path, name: str = REPORT) -> str:
    return (run / name).read_text()


def _figures(html: str) -> list[tuple[str, str]]:
    """(img src, caption text) of every <figure>."""
    out = []
    for fig in re.findall(r"<figure>(.*?)</figure>", html, re.S):
        src = re.search(r'<img[^>]*src="([^"]+)"', fig)
        cap = re.search(r"<figcaption>(.*?)</figcaption>", fig, re.S)
        out.append((src.group(1) if src else "", re.sub(r"<[^>]+>", "", cap.group(1)).strip() if cap else ""))
    return out


def test_training_writes_a_report_whose_every_figure_has_a_caption(runs):
    for name, run in runs.items():
        html = _html(run)
        figs = _figures(html)
        assert figs and all(cap for _, cap in figs), name
        assert "not finished" not in html and "Not shown: the final evaluation" not in html, name
        assert all(src.startswith("data:image/") for src, _ in figs if src), name
        # self-contained: nothing from the network, no file beside it
        assert not re.search(r'(src|href)="(?!data:|#)', html.replace('href="https://', 'href="#'))


def test_every_picture_a_run_writes_is_in_its_report_with_a_caption(runs):
    for name, run in runs.items():
        recorded = {f["file"]: f for f in json.loads((run / FIGURES).read_text())}
        pngs = {p.name for p in run.glob("*.png")}
        assert pngs <= set(recorded), (name, pngs - set(recorded))
        assert pngs <= set(PICTURES), name  # the layout knows each
        html = _html(run)
        for f in recorded.values():
            assert f["caption"] and f["title"], f
            assert f"<code>{f['file']}</code>" in html
            assert f["caption"].replace("'", "&#39;")[:60] in html


def test_the_metrics_table_holds_the_evaluation_and_how_it_was_measured(runs):
    run = runs["vae"]
    ev = json.loads((run / "eval-test.json").read_text())
    html = _html(run)
    assert "test split, best checkpoint, K = 5" in html
    for key in ("nll", "elbo", "bpd", "mse"):
        assert f"{ev[key]:.4g}" in html, key
    gan = _html(runs["gan"])
    assert "Not shown: a likelihood (ELBO, NLL, bits/dim).</b> A gan defines no density p(x)." in gan


def test_the_report_shows_the_curves_progress_traversals_codes_and_errors(runs):
    html = _html(runs["vae"])
    for title in ("Every quantity per epoch", "Every quantity per step", "Epoch 1", "Epoch 2", "Latent traversals",
                  "The test codes in 2-D", "Reconstruction error per image", "The worst reconstructions",
                  "Reconstructions", "Samples", "Interpolations", "The learned manifold", "Training curves"):
        assert f"<b>{title}.</b>" in html, title
    gan = _html(runs["gan"])
    for title in ("The game", "Progress", "Every quantity per epoch"):
        assert f"<b>{title}.</b>" in gan, title
    assert "Dashed: the game&#39;s equilibrium values" in gan  # the 1/2 and log 4 lines
    assert "each is G(z), the generator&#39;s output" in gan and "p(x|z)" not in gan
    ae = _html(runs["ae"])
    assert "Samples over training" not in ae and "<b>Latent traversals.</b>" in ae
    assert "Not shown: samples.</b> An ae has no prior to draw codes from; vaelab sample" in ae


def test_pictures_are_labelled(runs):
    run = runs["vae"]
    with Image.open(run / "reconstructions.png") as im:
        h, w = grid_size(64, (8, 8), 8)  # 32 test images, each above its reconstruction
        left, top = label_margins(64, (8, 8), 8, ["input", "reconstruction"])
        assert im.size == (w + left, h + top) and left > 40
    with Image.open(runs["gan"] / "progress.png") as im:  # the GAN's strip of epochs
        assert im.size[0] > grid_size(8, (8, 8), 8)[1]  # the epochs' labels on the left
    gan_curves = json.loads((runs["gan"] / FIGURES).read_text())
    assert not any("nats" in f["caption"] and f["file"] == "curves.png" for f in gan_curves)


def test_a_partial_run_gets_a_report_of_what_it_holds(runs, tmp_path):
    run = shutil.copytree(runs["vae"], tmp_path / "killed")
    # as a run killed after its first epoch leaves it: no final evaluation, pictures or second epoch
    for p in [*run.glob("*.png"), run / "eval-test.json", run / "finished.json", run / FIGURES, run / REPORT]:
        p.unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")
    assert main(["report", str(run)]) == 0
    html = _html(run)
    assert "Not shown: the final evaluation and pictures.</b> Training has not finished: 1 of 2 epochs" in html
    assert f"--resume {run}" in html
    assert "No evaluation file" in html
    assert "<b>Latent traversals.</b>" in html  # drawn from the checkpoint that exists
    # one epoch is one dot per panel: left out, and the page says where its figures are
    assert "Every quantity per epoch" not in html
    assert "Not shown: curves per epoch.</b> One epoch is one point per quantity" in html
    # no checkpoint at all: the page says so, and still shows the settings
    for p in run.glob("*.safetensors"):
        p.unlink()
    (run / "metrics.jsonl").write_text("")
    assert main(["report", str(run)]) == 0
    html = _html(run)
    assert "no epoch finished" in html and "<h2 id=\"settings\">" in html


def test_report_of_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json is missing" in err and "Traceback" not in err


def test_compare_writes_page_csv_and_markdown(runs, tmp_path):
    page = compare([str(runs["vae"]), str(runs["wae"])], tmp_path / "cmp")
    html = page.read_text()
    md = (tmp_path / "cmp" / "compare.md").read_text()
    rows = list(csv.reader((tmp_path / "cmp" / "compare.csv").read_text().splitlines()))
    assert rows[0][0] == "run" and [r[0] for r in rows[1:]] == ["vae", "wae"]
    mse = [i for i, h in enumerate(rows[0]) if h.startswith("recon. MSE")]
    assert len(mse) == 1  # measured alike on both: one column
    a, b = float(rows[1][mse[0]]), float(rows[2][mse[0]])
    assert a == json.loads((runs["vae"] / "eval-test.json").read_text())["mse"]
    best = f"{min(a, b):.4g}"
    assert f"<b>{best}</b>" in html and f"**{best}**" in md
    # the settings that differ: the model, not the seed
    assert "train.model" in html and "train.seed" not in html
    assert all(cap for _, cap in _figures(html))


def test_compare_keeps_figures_measured_differently_apart(runs, tmp_path):
    run = shutil.copytree(runs["vae"], tmp_path / "other-k")
    assert main(["eval", str(run), "-k", "7", "--no-sample-metrics", "--threads", "1"]) == 0
    assert main(["probe", str(run), "--labels", "50", "--threads", "1"]) == 0
    compare([str(runs["vae"]), str(run)], tmp_path / "cmp")
    head = next(csv.reader((tmp_path / "cmp" / "compare.csv").read_text().splitlines()))
    assert "NLL (digits test, best, K=5)" in head and "NLL (digits test, best, K=7)" in head
    assert "probe acc. (digits test, best, 50 labels)" in head
    # the same split, checkpoint and K on another dataset is another column, never ranked together
    other = shutil.copytree(runs["vae"], tmp_path / "other-data")
    doc = json.loads((other / "config.json").read_text())
    doc["run"]["data"]["data"] = "mnist"
    (other / "config.json").write_text(json.dumps(doc))
    compare([str(runs["vae"]), str(other)], tmp_path / "cmp2")
    head = next(csv.reader((tmp_path / "cmp2" / "compare.csv").read_text().splitlines()))
    assert "NLL (digits test, best, K=5)" in head and "NLL (mnist test, best, K=5)" in head
    assert "<b>" not in (tmp_path / "cmp2" / "compare.html").read_text().split("<tbody>")[1].split("</tbody>")[0]
    assert main(["report", str(run)]) == 0
    html = _html(run)
    probe = json.loads((run / "probe-labels50-seed0.json").read_text())
    assert "a linear probe on 50 labelled training images" in html and f"{probe['accuracy']:.4g}" in html


def test_compare_takes_a_folder_of_runs_and_refuses_what_is_not_one(runs, tmp_path, capsys):
    folder = runs["vae"].parent
    assert main(["compare", str(folder), "--out", str(tmp_path / "all")]) == 0
    names = [r[0] for r in csv.reader((tmp_path / "all" / "compare.csv").read_text().splitlines())][1:]
    assert names == sorted(runs)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a folder" in err and "Traceback" not in err
    (tmp_path / "file").write_text("")
    assert main(["compare", str(runs["vae"]), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "file")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err


def test_pages_in_a_real_browser(runs, tmp_path, browser):
    compare([str(runs["vae"]), str(runs["wae"])], tmp_path / "cmp")
    pages = [runs[name] / REPORT for name in runs] + [tmp_path / "cmp" / "compare.html"]
    for page in pages:
        shot = tmp_path / f"{page.parent.name}-{page.stem}.png"
        c = browser.open_page(page, shot)
        assert c.images and not c.broken_images, (page, c.images)
        assert c.console_errors == [] and c.requests == [], page
        assert not c.uncaptioned_figures, page
        assert shot.stat().st_size > 10_000


def test_no_report_leaves_the_page_to_vaelab_report(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                 "--nll-samples", "0", "--no-progress", "--no-report", "--out", str(run)]) == 0
    assert (run / "finished.json").is_file() and not (run / REPORT).exists()
    assert json.loads((run / "config.json").read_text())["run"]["train"]["report"] is False
    assert main(["report", str(run)]) == 0
    assert "Not shown: the final evaluation" not in _html(run)  # the finished run, written later


def test_the_report_package_never_imports_the_trainer():
    import ast
    import vaelab.report
    root = Path(vaelab.report.__file__).parent
    for py in root.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                assert not mod.lstrip(".").startswith(("training", "vaelab.training")), (py.name, mod)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("vaelab.training") for a in node.names), py.name


def test_a_partial_last_group_keeps_every_row_of_one_kind():
    import torch
    from vaelab.images import fraction_labels, rows_interleaved
    top, bottom = torch.ones(3, 1, 2, 2), torch.full((3, 1, 2, 2), 0.5)
    rows = rows_interleaved(top, bottom, 2)  # inputs 0-1 | recons 0-1 | input 2, blank | recon 2, blank
    assert rows.shape[0] == 8
    assert [float(r.mean()) for r in rows] == [1, 1, 0.5, 0.5, 1, 0, 0.5, 0]
    assert fraction_labels(10) == ["0.00", "0.11", "0.22", "0.33", "0.44", "0.56", "0.67", "0.78", "0.89", "1.00"]
    many = fraction_labels(30)
    assert many[0] == "0.00" and many[-1] == "1.00" and 2 <= sum(bool(v) for v in many) <= 11


def test_a_tampered_figures_record_embeds_nothing_but_the_runs_own_pictures(runs, tmp_path, capsys):
    run = shutil.copytree(runs["vae"], tmp_path / "t")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not the run's")
    (run / "notes.txt").write_text("text")
    (run / "samples.png").unlink()
    (run / "samples.png").symlink_to(secret)  # a link planted in the run directory
    record = json.loads((run / FIGURES).read_text())
    (run / FIGURES).write_text(json.dumps(record + [{"file": "notes.txt", "title": "t", "caption": "c"}]))
    assert main(["report", str(run)]) == 2  # the link is refused by name
    assert f"{run / 'samples.png'} is a symbolic link" in capsys.readouterr().err
    (run / "samples.png").unlink()
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    html = _html(run)
    assert "<code>notes.txt</code>" not in html and "<code>samples.png</code>" not in html
    assert "<code>reconstructions.png</code>" in html


def test_the_demos_report_passes_in_a_real_browser(tmp_path, browser):
    # the demo's own settings (2-D latent, its NLL's K), two epochs instead of its 500
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path / "demo")]) == 0
    page = tmp_path / "demo" / REPORT
    c = browser.open_page(page, tmp_path / "demo-report.png")
    assert c.images and not c.broken_images and c.console_errors == [] and c.requests == []
    assert not c.uncaptioned_figures and "The learned manifold" in page.read_text()
