"""Chapter 07's Table 2 experiment layer: config checks, item splits, the summary's directions, a smoke run."""

from __future__ import annotations

import json

import pytest

from k25mini.experiments.ch07_clipped_rl import run as ch07
from k25mini.experiments.ch07_clipped_rl.config import SUITES, TEXT_SUITES, VISION_SUITES, config_for
from k25mini.experiments.ch07_clipped_rl.report import section
from k25mini.world.skills import SUITE_SKILLS


@pytest.mark.parametrize("kw, msg", [({"iterations": 0}, "iterations"), ({"k": True}, "k must"),
                                     ({"lr": 0.0}, "lr"), ({"loss": "nope"}, "loss"), ({"seeds": ()}, "seeds"),
                                     ({"sft_seed": -1}, "sft_seed"), ({"temperature": float("nan")}, "temperature")])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        config_for("smoke", **kw)


def test_key_tracks_what_a_run_depends_on():
    a = config_for("smoke")
    assert a.key() == config_for("smoke", seeds=(7,)).key()
    assert a.key() != config_for("smoke", tau=0.0).key() != config_for("smoke", penalty_on_masked=True).key()
    assert config_for("smoke", loss="grpo").loss_kwargs() == {}
    assert config_for("smoke").loss_kwargs()["penalty_on_masked"] is False


def test_rl_prompts_come_from_the_train_split_of_vision_skills_and_never_from_eval():
    cfg = config_for("smoke", items_per_iter=6)
    skills = {sk for s in VISION_SUITES for sk in SUITE_SKILLS[s]}
    got = [it for i in range(5) for it in ch07.train_items(cfg, 0, i)]
    assert len(got) == 30 and all(it.meta["split"] == "train" and it.meta["skill"] in skills for it in got)
    assert [it.meta["key"] for it in ch07.train_items(cfg, 0, 3)] == [it.meta["key"] for it in got[18:24]]
    assert [it.meta["key"] for it in ch07.train_items(cfg, 1, 3)] != [it.meta["key"] for it in got[18:24]]
    ev = ch07.eval_items(config_for("smoke", eval_items=3))
    assert set(ev) == set(SUITES) and all(len(v) == 3 for v in ev.values())
    assert all(it.meta["split"] == "eval" for v in ev.values() for it in v)


def _run(seed, accs, rewards):
    return {"seed": seed, "per": {s: {"acc": a, "tokens": 3.0} for s, a in accs.items()},
            "curve": [{"reward": r} for r in rewards]}


def test_summary_directions_need_every_seed():
    cfg = config_for("smoke", iterations=8, seeds=(0, 1))
    before = {"per": {s: {"acc": 0.5} for s in SUITES}, "base_checkpoint": "ck"}
    up = {**{s: 0.5 for s in SUITES}, "TextKnow": 0.6, "TextReason": 0.4, "Code": 0.55}
    mixed = {**{s: 0.5 for s in SUITES}, "TextKnow": 0.7, "TextReason": 0.3, "Code": 0.45}
    res = ch07.summarise(cfg, before, [_run(0, up, [0.1, 0.2] * 4), _run(1, mixed, [0.3, 0.5] * 4)])
    assert res["text_direction"] == {"TextKnow": "up", "TextReason": "down", "Code": "mixed"}
    assert res["table"]["TextKnow"]["delta"]["values"] == pytest.approx([0.1, 0.2])
    assert res["table"]["VisKnow"]["delta"]["mean"] == 0.0
    flat = ch07.summarise(cfg, before, [_run(0, {s: 0.5 for s in SUITES}, [0.0] * 8)])
    assert set(flat["text_direction"].values()) == {"flat"}
    assert res["reward_curve"]["window"] == 2 and res["reward_curve"]["last"]["values"] == pytest.approx([0.15, 0.4])
    with pytest.raises(ValueError, match="runs"):
        ch07.summarise(cfg, before, [])


def test_smoke_run_end_to_end_and_reuse(tmp_path, monkeypatch):
    cfg = config_for("smoke", seeds=(0, 1))
    res = ch07.run_experiment(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", log=lambda m: None)
    assert set(res["table"]) == set(SUITES) and set(res["text_direction"]) == set(TEXT_SUITES)
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    saved = json.loads((tmp_path / "results" / "vision_rl_smoke.json").read_text())
    assert saved["provenance"]["source_hash"] and saved["config"]["iterations"] == cfg.iterations
    s0 = json.loads((tmp_path / "results" / "vision_rl" / "smoke" / "s0.json").read_text())
    assert len(s0["curve"]) == cfg.iterations and {"reward", "grad_norm", "masked_frac"} <= set(s0["curve"][0])
    md = section(tmp_path / "results", None, "smoke")
    assert "| MMLU-Pro | 84.7 | 86.4 | +1.7 | TextKnow |" in md and "| TextKnow (text) |" in md
    # a second run reuses every saved result: nothing is trained again

    def boom(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(ch07, "rl_iteration", boom)
    again = ch07.run_experiment(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results",
                                log=lambda m: None)
    assert again["table"] == res["table"]


def test_section_without_results(tmp_path):
    assert "No results yet" in section(tmp_path, None, "cpu")
