"""LLAMARUN_GEMV_FP8/INT4 (a sweep winner tried end to end) is read at import: a malformed one is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys


def _import_with(value: str) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_GEMV_FP8": value}
    code = "import llamarun.kernels.gemv as g; print(g.CONFIG['fp8'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_launch_configuration_from_the_environment():
    assert _import_with("4,512,2").stdout.strip() == "(4, 512, 2)"


def test_a_malformed_one_names_the_variable_and_the_form():
    result = _import_with("4,x")
    assert result.returncode != 0
    assert "LLAMARUN_GEMV_FP8='4,x' is not a launch configuration" in result.stderr
    assert "three positive integers" in result.stderr
