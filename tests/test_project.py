"""The project's promises about itself: the README's two commands and what CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_first_screen_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:30])
    commands = re.findall(r"^    (bash scripts/\S+)$", first_screen, flags=re.M)
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for cmd in commands:
        assert (ROOT / cmd.split()[1]).is_file()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_setup_pins_torch_first_and_the_range_admits_it():
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert venv.index('"torch==2.13.0"') < venv.index("-e \"$root[test]\"")
    pyproject = (ROOT / "pyproject.toml").read_text()
    lo, hi = re.search(r'"torch>=([\d.]+),<([\d.]+)"', pyproject).groups()
    as_tuple = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert as_tuple(lo) <= (2, 13, 0) < as_tuple(hi)
