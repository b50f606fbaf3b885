"""Flags, config files and the command line: sizes bounded before memory is taken, files that
nest or repeat, values quoted short, a run repeated from its config.json (--like), the flags
every computing command shares, suggestions for typos, the help, and the two-layer VAE's name."""
import json
import signal
import time
from contextlib import contextmanager

import pytest
import torch

import vaelab
from vaelab.cli import build_parser, main
from vaelab.errors import VaelabError
from vaelab.models import MODELS, get_model

TINY = ["--data", "digits", "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--batch-size", "64",
        "--nll-samples", "0", "--no-progress"]


def fails(capsys, argv, *needles):
    """The command exits 2 with one short line on stderr holding every needle, and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[:2000]
    assert len(err) < 1500, err[:2000]  # a user's value is quoted, not echoed whole
    for n in needles:
        assert n in err, (n, err)
    return err


@contextmanager
def within(seconds: int):
    """Fail the block if it runs longer than ``seconds`` (a check that builds 10^6 nets took 40 minutes)."""
    def late(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("flags") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


# --- sizes bounded before memory is taken ----------------------------------------------------

def test_k_is_bounded_before_anything_is_written(capsys, tmp_path):
    """--k 10^9 asked the allocator for 8 TB (a traceback) after config.json was written."""
    out = tmp_path / "never"
    fails(capsys, ["train", "--model", "iwae", "--k", "1000000000", "--out", str(out)], "--k 1000000000",
          "--batch-size 100", "limit")
    assert not out.exists()


def test_k_is_bounded_in_the_trainer_where_the_image_shape_comes_with_the_data(capsys, tmp_path, monkeypatch):
    """Data whose shape is known only once read (an image folder, an array): the trainer's check,
    before config.json."""
    import vaelab.run
    monkeypatch.setattr(vaelab.run, "known_spec", lambda name: None)
    out = tmp_path / "r"
    fails(capsys, ["train", *TINY, "--model", "iwae", "--k", "1000000000", "--out", str(out)], "--k 1000000000")
    assert not (out / "config.json").exists()


def test_k_that_fits_is_taken():
    cfg = vaelab.make_config(data="digits", model="iwae", k=50)
    assert cfg.model.k == 50


def test_iaf_flow_steps_are_counted_without_building_them():
    """--flow-steps 10^6 built every step's MADE on the meta device, 2.5 ms each: 40 minutes."""
    with within(30), pytest.raises(VaelabError, match=r"--flow-steps 1000000.* parameters.*limit"):
        vaelab.make_config(data="digits", model="iaf", flow_steps=1_000_000)
    cfg = vaelab.make_config(data="digits", model="iaf", flow_steps=3, flow_hidden=(7, 5), context_dim=4).model
    built = get_model("iaf")(cfg)
    assert get_model("iaf").count_parameters(cfg) == sum(t.numel() for t in (*built.parameters(), *built.buffers()))


# --- config files ------------------------------------------------------------------------------

def test_tables_nested_2000_deep_are_refused(capsys, tmp_path):
    toml = tmp_path / "deep.toml"
    toml.write_text("[" + ".".join(f"a{i}" for i in range(2000)) + "]\nepochs = 1\n")
    fails(capsys, ["train", "--config", str(toml), "--out", str(tmp_path / "x")], str(toml), "deeper than")
    js = tmp_path / "deep.json"
    js.write_text("[" * 100_000 + "]" * 100_000)
    fails(capsys, ["train", "--config", str(js), "--out", str(tmp_path / "x")], str(js), "deep")


def test_a_long_value_is_quoted_short(capsys, tmp_path):
    """A 1 MB string: as --out it ended in an OSError traceback; elsewhere it was echoed whole."""
    long = "a" * 1_000_000
    toml = tmp_path / "long.toml"
    toml.write_text(f'out = "{long}"\n')
    fails(capsys, ["train", "--config", str(toml)], "--out 'aaaa", "1,000,000 characters", "255 bytes")
    toml.write_text(f'lr_schedule = "{long}"\n')
    fails(capsys, ["train", "--config", str(toml), "--out", str(tmp_path / "x")], "lr_schedule",
          "1,000,000 characters")
    toml.write_text(f'{long} = 1\n')
    fails(capsys, ["train", "--config", str(toml), "--out", str(tmp_path / "x")], "unknown key", "characters")


def test_a_setting_given_twice_in_one_file_is_refused(capsys, tmp_path):
    """epochs = 1 beside [train] epochs = 2 trained 2 epochs, silently."""
    toml = tmp_path / "twice.toml"
    toml.write_text("epochs = 1\n[train]\nepochs = 2\n")
    fails(capsys, ["train", "--config", str(toml), "--out", str(tmp_path / "x")], "'epochs' twice",
          "'train.epochs'")
    toml.write_text("latent-dim = 2\nlatent_dim = 3\n")
    fails(capsys, ["train", "--config", str(toml), "--out", str(tmp_path / "x")], "'latent_dim' twice")


@pytest.mark.parametrize("value", ["200,,200", "200,", ",200", "200, ,200"])
def test_an_empty_list_element_is_refused(capsys, tmp_path, value):
    """--hidden 200,,200 was read as 200,200."""
    fails(capsys, ["train", "--hidden", value, "--out", str(tmp_path / "x")], "--hidden", "empty element")
    with pytest.raises(VaelabError, match="empty element"):
        vaelab.make_config(data="digits", hidden=value)


# --- the environment under torchrun ----------------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "0", "2.5"])
def test_a_bad_world_size_is_named(capsys, monkeypatch, value):
    """`WORLD_SIZE=abc vaelab sample RUN` ended in a ValueError traceback."""
    monkeypatch.setenv("WORLD_SIZE", value)
    fails(capsys, ["sample", "runs/none"], f"environment variable WORLD_SIZE is '{value}'", "whole number")


def test_a_bad_rank_is_said_not_swallowed(capsys, monkeypatch, run_dir):
    """`WORLD_SIZE=2 RANK=x vaelab eval RUN` exited 2 and said nothing: only rank 0 spoke."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "x")
    fails(capsys, ["eval", str(run_dir), "-k", "2"], "environment variable RANK is 'x'", "whole number")


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_a_launch_without_its_meeting_place_is_named(capsys, monkeypatch, run_dir, missing):
    """`WORLD_SIZE=2 vaelab eval RUN` without MASTER_ADDR ended in torch's ValueError traceback."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.delenv(missing)
    fails(capsys, ["eval", str(run_dir), "-k", "2"], f"the environment variable {missing} is not set")


def test_a_bad_local_world_size_is_named(monkeypatch):
    from vaelab import distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    with pytest.raises(VaelabError, match="^the environment variable LOCAL_WORLD_SIZE is 'x': expected a whole"):
        distributed.default_threads()


# --- a run repeated -------------------------------------------------------------------------------------

def _settings(run) -> dict:
    return json.loads((run / "config.json").read_text())["run"]


def test_a_runs_config_json_is_a_config_file(capsys, run_dir, tmp_path):
    """`vaelab train --config RUN/config.json` answered "unknown key 'format_version'"."""
    again = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.json"), "--out", str(again)]) == 0
    a, b = _settings(run_dir), _settings(again)
    assert b["train"]["out"] == str(again) and a["model"] == b["model"] and a["data"] == b["data"]
    assert {k: v for k, v in a["train"].items() if k != "out"} == {k: v for k, v in b["train"].items() if k != "out"}


def test_like_takes_a_runs_settings_and_a_flag_wins(capsys, run_dir, tmp_path):
    out = tmp_path / "like"
    assert main(["train", "--like", str(run_dir), "--latent-dim", "3", "--out", str(out)]) == 0
    a, b = _settings(run_dir), _settings(out)
    assert b["model"]["latent_dim"] == 3 and b["model"]["hidden"] == a["model"]["hidden"] == [8]
    assert b["train"]["epochs"] == 1 and b["train"]["batch_size"] == 64


def test_like_with_another_model_keeps_what_it_has(run_dir):
    cfg = vaelab.make_config(like=run_dir, model="iwae", k=3)
    assert cfg.train.model == "iwae" and cfg.model.hidden == (8,) and cfg.model.k == 3 and cfg.train.epochs == 1


def test_like_never_writes_over_the_run(capsys, run_dir, monkeypatch):
    """The run's --out is not taken: without one, the default (runs/<data>-<model>)."""
    cfg = vaelab.make_config(like=run_dir)
    assert cfg.train.out is None and not cfg.train.overwrite


def test_like_refusals(capsys, run_dir, tmp_path):
    fails(capsys, ["train", "--like", str(tmp_path / "nope")], "--like", "no such run directory")
    fails(capsys, ["train", "--like", str(tmp_path)], "--like", "config.json is missing")
    fails(capsys, ["train", "--like", str(run_dir), "--config", str(run_dir / "config.json")], "--like", "--config")
    fails(capsys, ["train", "--resume", str(run_dir), "--like", str(run_dir)], "--resume", "--like")


# --- flags every command shares -----------------------------------------------------------------------

COMPUTING = {"eval": True, "sample": True, "reconstruct": False, "interpolate": True, "manifold": False,
             "probe": True, "finetune": True, "demo": True}


@pytest.mark.parametrize("cmd, draws", COMPUTING.items())
def test_every_computing_command_takes_threads_device_and_seed(cmd, draws):
    flags = build_parser().commands[cmd]._option_string_actions
    assert "--threads" in flags and "--device" in flags
    assert ("--seed" in flags) == draws


def test_sample_takes_threads_and_device(capsys, run_dir, tmp_path):
    """`vaelab sample RUN --threads 1` answered "unknown flag --threads"."""
    before = torch.get_num_threads()
    try:
        png = tmp_path / "s.png"
        assert main(["sample", str(run_dir), "--threads", "1", "--device", "cpu", "-n", "4", "-o", str(png)]) == 0
        assert png.is_file() and torch.get_num_threads() == 1
        capsys.readouterr()
        fails(capsys, ["reconstruct", str(run_dir), "--threads", "0"], "--threads must be from 1 to ")
        fails(capsys, ["manifold", str(run_dir), "--device", "tpu"], "--device")
    finally:
        torch.set_num_threads(before)


# --- suggestions ------------------------------------------------------------------------------------------

def test_typos_get_a_suggestion(capsys, tmp_path):
    out = str(tmp_path / "x")
    fails(capsys, ["train", "--data", "mnst", "--out", out], "--data", "did you mean 'mnist'?")
    fails(capsys, ["train", "--laten-dim", "3", "--out", out], "--laten-dim", "did you mean --latent-dim?")
    toml = tmp_path / "c.toml"
    toml.write_text("epoch = 3\n")
    fails(capsys, ["train", "--config", str(toml), "--out", out], "'epoch'", "did you mean 'epochs'?")
    fails(capsys, ["train", "--model", "vea", "--out", out], "--model", "did you mean 'vae'?")
    fails(capsys, ["train", "--lr-schedule", "cosin", "--out", out], "did you mean 'cosine'?")
    fails(capsys, ["sample", "RUN", "--sed", "1"], "did you mean --seed?")
    fails(capsys, ["trian"], "did you mean 'train'?")


# --- the help -------------------------------------------------------------------------------------------

def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_the_help_shows_no_empty_default(capsys):
    assert "[default: None]" not in _help(capsys, ["train", "--help"])
    assert "[default: -]" not in _help(capsys, ["eval", "--help"])


@pytest.mark.parametrize("cmd", ["eval", "sample", "reconstruct", "interpolate", "manifold", "probe", "finetune"])
def test_run_dir_has_help(capsys, cmd):
    assert "RUN_DIR a run directory that vaelab train wrote" in _help(capsys, [cmd, "--help"])


def test_help_of_an_unknown_model_is_refused(capsys):
    """`vaelab train --model nosuch --help` printed the general help and exited 0."""
    fails(capsys, ["train", "--model", "vea", "--help"], "--model", "did you mean 'vae'?")


# --- the two-layer VAE's name -----------------------------------------------------------------------------

def test_the_two_layer_vae_says_what_it_is(capsys):
    assert "vae-2layer" in MODELS and "hvae" not in MODELS
    text = _help(capsys, ["train", "--model", "vae-2layer", "--help"])
    assert "two stochastic layers" in text and "not Pythae's Hamiltonian VAE" in text


def test_hvae_is_read_as_vae_2layer(capsys, tmp_path):
    """--model hvae and a run saved as hvae (config.json, checkpoints) still load."""
    assert vaelab.make_config(data="digits", model="hvae", preset="iwae").train.model == "vae-2layer"
    run = tmp_path / "old"
    assert main(["train", *TINY, "--model", "hvae", "--top-hidden", "4", "--top-latent-dim", "2",
                 "--out", str(run)]) == 0
    doc = json.loads((run / "config.json").read_text())
    assert doc["run"]["train"]["model"] == doc["run"]["model_name"] == "vae-2layer"
    doc["run"]["train"]["model"] = doc["run"]["model_name"] = "hvae"  # as a run saved before the rename
    (run / "config.json").write_text(json.dumps(doc))
    model = vaelab.load(run, device="cpu")
    assert type(model).name == "vae-2layer" and model.run_config.train.model == "vae-2layer"
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")]) == 0
    assert vaelab.make_config(like=run).train.model == "vae-2layer"


def test_the_checks_are_quick():
    """The meta-device forward that sizes an IWAE's step is cheap at the paper's sizes."""
    t0 = time.perf_counter()
    vaelab.make_config(data="mnist", model="vae-2layer", preset="iwae", k=50)
    assert time.perf_counter() - t0 < 10


# --- sizes that would hang rather than fail ---------------------------------------------------------------

@pytest.mark.parametrize("typo,meant", [("gmn:10", "gmm:10"), ("two-stag", "two-stage"), ("pior", "prior")])
def test_a_mistyped_sampler_gets_a_suggestion(capsys, run_dir, typo, meant):
    fails(capsys, ["sample", str(run_dir), "--sampler", typo], f"(did you mean '{meant}'?)")


def test_a_list_of_a_million_layers_is_refused_at_once(capsys, tmp_path):
    """`--hidden 1,1,...` (10^6 layers) was still running after 120 s: the size check builds the
    net layer by layer, and its parameters are few."""
    import time
    t0 = time.perf_counter()
    fails(capsys, ["train", "--hidden", ",".join(["1"] * 1_000_000), "--out", str(tmp_path / "r")],
          "--hidden lists 1,000,000 values; at most 64 are taken")
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "r").exists()
    (tmp_path / "c.toml").write_text("hidden = [" + ", ".join(["1"] * 65) + "]\n")
    fails(capsys, ["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")], "65 values")


def test_an_nll_of_a_billion_samples_is_refused(capsys, run_dir, tmp_path):
    """`vaelab eval RUN -k 1000000000` started an NLL that would run for years."""
    fails(capsys, ["eval", str(run_dir), "-k", "1000000000"], "--nll-samples 1,000,000,000", "1,000,000 at most")
    fails(capsys, ["train", "--nll-samples", "2000000", "--out", str(tmp_path / "r")], "--nll-samples 2,000,000")
    assert not (tmp_path / "r").exists()
