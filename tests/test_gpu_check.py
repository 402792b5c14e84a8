"""``make test-gpu`` (tools/gpu_check.py) without CUDA: a clear skip message, exit code 0, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "gpu_check: skipped: no CUDA device" in p.stdout
    assert not out.exists()


def test_make_test_gpu_target_runs_the_check():
    mk = (ROOT / "Makefile").read_text()
    assert "test-gpu:" in mk and "tools/gpu_check.py" in mk
    phony = next(line for line in mk.splitlines() if line.startswith(".PHONY"))
    assert "test-gpu" in phony.split()
