"""The project's promises about itself: the README's two commands and what CI runs, and a README
that is a user's guide: short, linked to docs/, and free of the project's own bookkeeping."""
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


README_MAX_LINES = 300
ISSUE_NUMBER = re.compile(r"\bissues? \d+", flags=re.I)


def _user_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_a_short_guide_that_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES, "README.md grew past a user's guide: move detail to docs/"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= linked, "a page in docs/ the README does not link"


def test_user_docs_name_no_issue_numbers():
    # "issue 15" means something to the people who built vaelab, nothing to a user
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}"
             for p in _user_docs() for i, line in enumerate(p.read_text().splitlines(), 1)
             for m in ISSUE_NUMBER.finditer(line)]
    assert not found, "\n".join(found)


def test_user_docs_relative_links_and_images_exist():
    missing = []
    for p in _user_docs():
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", p.read_text()):
            if "://" not in target and not (p.parent / target).exists():
                missing.append(f"{p.relative_to(ROOT)}: {target}")
    assert not missing, "\n".join(missing)
