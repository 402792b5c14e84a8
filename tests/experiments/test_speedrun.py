"""``make speedrun`` at smoke scale: trains every stage, twice with identical numbers, resumes, replays, and flags."""

import json

import pytest

from k25mini import speedrun


def _metrics(rec):
    return {k: v["metrics"] for k, v in rec["stages"].items()}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    d = tmp_path_factory.mktemp("speedrun")
    rec = speedrun.run("smoke", runs_dir=d / "runs", results_dir=d / "results", docs_dir=d / "docs",
                       progress=False, log=lambda m: None)
    return d, rec


def test_speedrun_trains_every_stage_and_writes_the_card(first):
    d, rec = first
    keys = list(rec["stages"])
    assert keys[:2] == ["configs", "world"] and keys.index("text") < keys.index("vit") < keys.index("joint") \
        < keys.index("sft") < keys.index("rl") < keys.index("swarm")
    assert all(v["status"] == "ok" and not v["reused"] and not v["resumed"] for v in rec["stages"].values())
    assert rec["complete"] and rec["schema"] == 2 and rec["provenance"]["source_hash"]
    disk = json.loads((d / "results" / "speedrun_smoke.json").read_text())
    assert _metrics(disk) == _metrics(json.loads(json.dumps(rec)))
    card = (d / "docs" / "report_card_smoke.md").read_text()
    assert "| finding | paper | committed | ours | verdict |" in card and "Table 1, early fusion, OCR" in card
    assert "swarm: fewer critical steps" in card and "REUSED" not in card
    assert "zero-vision SFT + tool vs direct, count (ch. 06)" in card
    assert "vision RL moves text: TextKnow (ch. 07, Table 2)" in card
    # one model's life: the SFT stage starts from the joint checkpoint, the swarm from the SFT checkpoint
    sft = json.loads((d / "runs" / "results" / "zero_vision_sft" / "smoke" / "zero_vision-s0.json").read_text())
    assert "early-s0" in sft["base_checkpoint"] and sft["sandbox"]
    rl = json.loads((d / "runs" / "results" / "vision_rl" / "smoke" / "s0.json").read_text())
    assert "zero_vision-s0" in rl["base_checkpoint"] and rl["curve"]
    swarm = json.loads((d / "runs" / "results" / "swarm_smoke.json").read_text())
    assert swarm["config"]["init_from"].endswith("zero_vision-s0")  # RL keeps no checkpoint yet


def test_speedrun_gives_identical_numbers_twice_and_resumes(first, tmp_path):
    d, rec = first
    again = speedrun.run("smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results",
                         docs_dir=tmp_path / "docs", progress=False, log=lambda m: None)
    assert json.dumps(_metrics(again), sort_keys=True) == json.dumps(_metrics(rec), sort_keys=True)
    resumed = speedrun.run("smoke", runs_dir=d / "runs", results_dir=d / "results",
                           docs_dir=tmp_path / "docs2", progress=False, log=lambda m: None)
    for k in ("text", "vit", "joint", "sft", "rl", "swarm"):
        assert resumed["stages"][k]["resumed"], k
        # the record keeps the time the stage took to train, not the seconds it took to find it finished
        assert resumed["stages"][k]["trained_seconds"] == rec["stages"][k]["trained_seconds"] > 0, k
    assert resumed["trained_seconds"] > 0
    assert "training every stage from scratch took" in (tmp_path / "docs2" / "report_card_smoke.md").read_text()
    assert json.dumps(_metrics(resumed), sort_keys=True) == json.dumps(_metrics(rec), sort_keys=True)


def test_reuse_replays_committed_results_and_flags_stale_ones(first, tmp_path, capsys):
    d, rec = first
    # the first run's own outputs stand in for committed results
    committed = tmp_path / "results"
    (committed / "fusion_ablation" / "smoke").mkdir(parents=True)
    run = json.loads((d / "runs" / "results" / "fusion_ablation" / "smoke" / "early-s0.json").read_text())
    run["provenance"]["source_hash"] = "deadbeef0000"  # made by other code
    (committed / "fusion_ablation" / "smoke" / "early-s0.json").write_text(json.dumps(run))
    (committed / "swarm_smoke.json").write_text((d / "runs" / "results" / "swarm_smoke.json").read_text())
    (committed / "zero_vision_sft" / "smoke").mkdir(parents=True)
    for f in ("no_sft.json", "zero_vision-s0.json"):
        src = d / "runs" / "results" / "zero_vision_sft" / "smoke" / f
        (committed / "zero_vision_sft" / "smoke" / f).write_text(src.read_text())
    (committed / "vision_rl" / "smoke").mkdir(parents=True)
    for f in ("before.json", "s0.json"):
        src = d / "runs" / "results" / "vision_rl" / "smoke" / f
        (committed / "vision_rl" / "smoke" / f).write_text(src.read_text())
    lines = []
    out = speedrun.run("smoke", mode="reuse", runs_dir=tmp_path / "none", results_dir=committed,
                       docs_dir=tmp_path / "docs", progress=False, log=lines.append)
    assert not (tmp_path / "none").exists()  # nothing trained
    text = "\n".join(lines)
    assert "REUSED" in text and "fusion_ablation/smoke/early-s0.json" in text and "swarm_smoke.json" in text
    assert out["stages"]["joint"]["stale"].startswith("STALE") and out["stages"]["swarm"]["stale"] is None
    assert out["stages"]["joint"]["metrics"]["final"] == rec["stages"]["joint"]["metrics"]["final"]
    card = (tmp_path / "docs" / "report_card_smoke.md").read_text()
    assert "Nothing was trained" in card and "Stale results" in card and "deadbeef0000" in card


def test_reuse_without_committed_results_fails_clearly(tmp_path):
    out = speedrun.run("smoke", mode="reuse", runs_dir=tmp_path / "r", results_dir=tmp_path / "empty",
                       docs_dir=tmp_path / "docs", progress=False, log=lambda m: None)
    st = [v for v in out["stages"].values() if v["status"] == "failed"]
    assert len(st) == 1 and "no committed result to replay" in st[0]["error"] and not out["complete"]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="only"):
        speedrun.run("smoke", runs_dir=tmp_path, results_dir=tmp_path, docs_dir=tmp_path, only=("nope",),
                     log=lambda m: None)
    with pytest.raises(ValueError, match="mode"):
        speedrun.run("smoke", mode="replay", runs_dir=tmp_path, results_dir=tmp_path, docs_dir=tmp_path,
                     log=lambda m: None)


def test_fresh_ignores_disk_and_replaces_the_old_run_only_when_it_finishes(first, tmp_path):
    import shutil

    d, rec = first
    runs = tmp_path / "runs"
    shutil.copytree(d / "runs", runs)
    (runs / "marker").write_text("the old run")
    kw = dict(runs_dir=runs, results_dir=tmp_path / "results", docs_dir=tmp_path / "docs", progress=False,
              log=lambda m: None)
    bad = speedrun.run("smoke", mode="fresh", only=("swarm",), **kw)  # no joint checkpoint in a fresh folder
    assert bad["stages"]["swarm"]["status"] == "failed" and "checkpoint" in bad["stages"]["swarm"]["error"]
    assert (runs / "marker").read_text() == "the old run"  # a failed fresh run leaves the old one alone
    good = speedrun.run("smoke", mode="fresh", **kw)
    assert good["complete"] and not any(v["resumed"] for v in good["stages"].values())
    assert not (runs / "marker").exists() and not runs.with_name("runs.fresh").exists()
    assert json.dumps(_metrics(good), sort_keys=True) == json.dumps(_metrics(rec), sort_keys=True)
