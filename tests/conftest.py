"""Shared fixtures. Real data is found through $VAELAB_DATA (scripts/test.sh points it at
../shared/data when that exists); where it is missing, tests that need it skip with a reason,
except under CI=true, where a missing file is a failure."""
import os
from pathlib import Path

import pytest
import torch


def _real_data_root():
    env = os.environ.get("VAELAB_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return here if here.is_dir() else None


def require_real(*relpaths):
    """Return the real data directory holding every relpath, or skip (fail under CI=true)."""
    root = _real_data_root()
    missing = [p for p in relpaths if root is None or not (root / p).exists()]
    if missing:
        msg = f"real data missing: {', '.join(missing)} (set VAELAB_DATA to a folder like ../shared/data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture
def mnist_dir():
    return require_real(*(f"mnist/{f}" for f in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")))


@pytest.fixture
def fashion_dir():
    return require_real(*(f"fashion-mnist/{f}" for f in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")))


@pytest.fixture(autouse=True, scope="session")
def _classifier_cache(tmp_path_factory):
    # the Fréchet distance's classifiers are cached per session, never in the user's ~/.cache
    mp = pytest.MonkeyPatch()
    mp.setenv("VAELAB_CACHE", str(tmp_path_factory.mktemp("vaelab-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _small_torch():
    # Tests are tiny; one thread keeps them deterministic and avoids oversubscription.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


# The suite's longest files (seconds of one process on the 2-core AMD EPYC), collected first: under
# pytest-xdist (scripts/test.sh: --dist loadfile) a file is one unit of work, and a long one handed
# out last would run alone at the end while the other workers idle.
LONGEST_FIRST = ("test_distributed.py", "test_cpu_paths.py", "test_lecture_figures.py", "test_crashes.py",
                 "test_diskfull.py", "test_run_safety.py", "test_faults.py", "test_faults_every_model.py",
                 "test_results_kept.py", "test_probe.py",
                 "test_report.py", "test_cli.py", "test_fuzz.py", "test_crafted.py")


def pytest_collection_modifyitems(config, items):
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file's own order stays
