"""The tests whose figures depend on the CPU's float kernels (marked ``cpu_paths``) pass on other
kernel paths than this machine's own: they are run again here, in a fresh process, under
``ATEN_CPU_CAPABILITY=default`` (torch's generic kernels, a cheap look at what another CPU
computes): the recorded training runs (test_fixture.py), the NLL's bf16 and compiled paths
(test_nll_paths.py) and the training step's fast paths (test_fast_paths.py: autocast, oneDNN's
channels_last convolutions, torch.compile). docs/testing.md says how to run them under avx2 and
avx512 as well."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default", reason="this run is the generic kernels' run")
def test_the_cpu_sensitive_tests_pass_on_the_generic_kernels(tmp_path):
    # inductor's own cache: torch keys its compiled kernels without ATEN_CPU_CAPABILITY, and a
    # kernel vectorized for this CPU, read back under the generic kernels' header, fails to build
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cpu_paths",
                        "-W", "error::ResourceWarning", str(HERE)],
                       env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=900)
    # what ran, so that a run that selected nothing cannot pass
    assert r.returncode == 0 and " passed" in r.stdout and "failed" not in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
