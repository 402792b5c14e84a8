"""SIGKILL at >= 20 points (step compute, checkpoint writing, resume), each resumed to the end: always bit-exact.

The trials run in tests/train/sigkill_driver.py (one interpreter; each run is a forked child killed at an exact
instrumentation point); see docs/reliability_checkpoints.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import k25mini

DRIVER = Path(__file__).with_name("sigkill_driver.py")
KILLS = 40


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    return {f"{f}:{k}": v for f in ("model.safetensors", "optimizer.safetensors")
            for k, v in load_file(str(ckpt / f)).items()}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the driver forks its trial runs")
def test_sigkill_anywhere_then_resume_is_bit_exact(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(k25mini.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "trials"
    proc = subprocess.run([sys.executable, str(DRIVER), str(out), "--kills", str(KILLS), "--seed", "0",
                           "--json", str(tmp_path / "result.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "result.json").is_file(), proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    trials = result["trials"]
    assert len(trials) >= 20
    bad = [t for t in trials if not t["ok"]]
    assert not bad, bad
    # the kill points are spread over the step, the checkpoint write and the resume, and over the run
    assert result["kills_in_step"] >= 3 and result["kills_in_save"] >= 8 and result["kills_in_resume"] >= 1
    assert len({t["steps_done"] for t in trials}) >= 5
    assert result["ok"] and proc.returncode == 0
    # after every kill, the state it left was resumed to the end; and every chain of killed-and-resumed runs
    # ended: all with the reference's final weights and optimizer state, tensor by tensor
    ref_final = out / "reference" / "checkpoints" / "step_00000008"
    ref = _tensors(ref_final)
    ref_state = json.loads((ref_final / "state.json").read_text())
    finals = [out / t["resumed_to_end"] for t in trials]
    finals += [out / f"chain_{c['chain']:02d}" / "checkpoints" / "step_00000008" for c in result["chains"]]
    assert len(finals) == len(trials) + len(result["chains"])
    for final in finals:
        assert final.name == "step_00000008", final
        got = _tensors(final)
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (final, k)
        assert json.loads((final / "state.json").read_text())["optimizer"] == ref_state["optimizer"]
    # control: the comparison tells neighbouring steps apart
    prev = _tensors(out / "reference" / "checkpoints" / "step_00000007")
    assert any(not torch.equal(prev[k], ref[k]) for k in ref)
