"""``torchrun -m k25mini.train`` (2 gloo processes, nano K2.5 with its vision tower sharded): trains, writes DCP
checkpoints, resumes in one process from the 2-process checkpoint, converts to safetensors; bad arguments name
themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

ARGS = ["--preset", "nano", "--batch", "4", "--seq", "16", "--ckpt-every", "2", "--lr", "3e-3"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.distributed
def test_torchrun_entry_point_trains_resumes_and_converts(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "k25mini.train", *ARGS, "--dp", "1", "--ep", "2", "--steps", "4", "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "world=2 mesh dp=1 x ep=2" in proc.stdout
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert (out / "checkpoints" / "step_00000004" / ".metadata").is_file()

    # one process picks up the 2-process checkpoint and goes on to step 6, then writes one safetensors file
    cmd1 = [sys.executable, "-m", "k25mini.train", *ARGS, "--steps", "6", "--out", str(out), "--resume",
            "--threads", "1", "--safetensors"]
    proc = subprocess.run(cmd1, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "resumed from" in proc.stdout and "(step 4)" in proc.stdout
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] == r["loss"] for r in recs)  # finite, no NaN
    assert (out / "checkpoints" / "step_00000006.safetensors").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--preset", "k2"], "--preset"),
    (["--dp", "3"], "--dp x --ep"),
    (["--steps", "0"], "--steps"),
    (["--lr", "0"], "--lr"),
    (["--threads", "-1"], "--threads"),
    (["--resume"], "--out"),
])
def test_bad_arguments_are_named(args, needle, capsys, monkeypatch):
    from k25mini.train.__main__ import main

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and needle in capsys.readouterr().err
