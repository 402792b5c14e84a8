"""Chapter 09's speedrun stages: the memory plan of the full K2.5, and the 2-process run resumed on 1."""

from __future__ import annotations

import pytest

from k25mini.experiments.ch09_scaling import speedrun_stages, stage_dist, stage_plan
from k25mini.experiments.registry import get
from k25mini.experiments.stage import StageContext


def test_registered_in_chapter_order():
    assert get("scaling").chapter == "09"
    assert [s.key for s in speedrun_stages("smoke")] == ["plan", "dist"]


def test_plan_stage_reports_k2_mesh(tmp_path):
    res = stage_plan(StageContext("smoke", tmp_path, tmp_path))
    assert 40 < res.metrics["k2_mesh_gib"] < 80  # K2's mesh on 256 x 80 GB fits (docs/scaling.md: 71.6 GiB)
    assert any("K2's mesh" in k for k in res.lines)


@pytest.mark.distributed
def test_dist_stage_trains_on_two_processes_and_resumes_on_one(tmp_path):
    res = stage_dist(StageContext("smoke", tmp_path, tmp_path))
    m = res.metrics
    assert m["loss_2proc"] < m["loss_first"]
    assert (tmp_path / "ch09_dist" / "checkpoints").is_dir()
    skipped = stage_dist(StageContext("smoke", tmp_path, tmp_path, mode="reuse"))
    assert "skipped" in skipped.lines
