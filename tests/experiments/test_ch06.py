"""Chapter 06's experiment layer: config checks, a smoke run of every arm, the summary and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from k25mini.experiments.ch06_zero_vision.config import ARMS, config_for
from k25mini.experiments.ch06_zero_vision.report import section
from k25mini.experiments.ch06_zero_vision.run import acceptance, eval_items, run_experiment
from tests.tools.conftest import strong_mode_or_skip


@pytest.mark.parametrize("kw, msg", [({"steps": 0}, "steps"), ({"arms": ("sft",)}, "arms"), ({"seeds": ()}, "seeds"),
                                     ({"eval_split": "test"}, "eval_split"), ({"max_calls": -1}, "max_calls"),
                                     ({"lr": 0.0}, "lr")])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        config_for("smoke", **kw)


def test_key_tracks_what_a_run_depends_on():
    a = config_for("smoke")
    assert a.key() == config_for("smoke", seeds=(5,), arms=("no_sft",)).key()  # lists of runs are not in the key
    assert a.key() != config_for("smoke", contexts=("describe",)).key()
    assert a.key() != config_for("smoke", eval_split="dev").key()


def test_eval_and_dev_items_are_disjoint_splits():
    cfg = config_for("smoke", eval_per_skill=3, text_eval_items=2)
    ev, dev = eval_items(cfg), eval_items(config_for("smoke", eval_per_skill=3, text_eval_items=2, eval_split="dev"))
    assert all(it.meta["split"] == "eval" for k in ("count", "chart") for it in ev[k])
    assert all(it.meta["split"] == "train" for k in ("count", "chart") for it in dev[k])
    assert len(ev["motion"]) == 3 and len(ev["Code"]) == 2


def _table(vals):
    return {k: {"acc": {"mean": v, "std": 0.0, "n": 1, "values": [v]}} for k, v in vals.items()}


def test_acceptance_needs_every_seed():
    base = {"count": 0.5, "chart": 0.2, "compare": 0.5, "TextKnow": 0.5, "TextReason": 0.4, "Code": 0.3}
    runs = [{"per": {k: {"acc": v, "calls": 10, "valid_call_rate": 1.0} for k, v in
                     {**base, "count": 0.7, "chart": 0.9, "compare": c, "TextKnow": 0.49}.items()}}
            for c in (0.7, 0.6)]  # compare is lifted by 20 on one seed and 10 on the other
    table = {"no_sft": _table(base), "zero_vision": _table({**base, "count": 0.7, "chart": 0.9, "compare": 0.65,
                                                            "TextKnow": 0.49})}
    c = acceptance(table, {"zero_vision": {"runs": runs}})
    assert c["lifted_skills_every_seed"] == ["count", "chart"] and c["two_skills_lifted"]
    assert c["valid_ok"] and c["text_within_2"] and c["text_delta"]["TextKnow"] == pytest.approx(-0.01)


def test_blank_arm_draws_bs_set_with_blank_pictures():
    from k25mini.experiments.ch06_zero_vision.config import arm_set
    from k25mini.sft.data import build_sft_set
    from k25mini.world import World

    cfg = config_for("smoke")
    assert arm_set(cfg, "zero_vision") == ("zero_vision", cfg.contexts)
    assert arm_set(cfg, "zero_vision_blank") == ("zero_vision", cfg.blank_contexts) and "blank" in cfg.blank_contexts
    assert arm_set(cfg, "text_visual") == ("text_visual", cfg.contexts)
    with pytest.raises(ValueError, match="arm must be"):
        arm_set(cfg, "no_sft")
    rows = build_sft_set(World(0, scale="smoke"), *arm_set(cfg, "zero_vision_blank")[:1], 60, 0,
                         contexts=cfg.blank_contexts)
    shown = [im for t in rows for im in t.item.images]
    assert shown and all(len(np.unique(im.reshape(-1, 3), axis=0)) == 1 for im in shown)  # every picture blank
    assert {t.meta["context"] for t in rows if t.item.images} == {"blank"}
    assert config_for("smoke").key() != config_for("smoke", blank_contexts=("describe", "blank")).key()


def test_smoke_run_of_every_arm(tmp_path):
    strong_mode_or_skip()
    cfg = config_for("smoke", seeds=(0,), eval_per_skill=1, text_eval_items=1)
    res = run_experiment(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", log=lambda m: None)
    assert set(res["table"]) == set(ARMS)
    assert "TextKnow" not in res["table"]["oracle"]  # the oracle has programs for pictures only
    assert res["sandboxes"] and not any("WEAK" in s for s in res["sandboxes"])
    assert res["sets"]["zero_vision"]["images"] == 0 and res["sets"]["text_visual"]["images"] > 0
    # (b') draws (b)'s budget (its blank pictures are checked above; too few twins at smoke to reach them)
    assert res["sets"]["zero_vision_blank"]["rows"] == res["sets"]["zero_vision"]["rows"]
    assert res["checks_blank"]["text_delta"].keys() == res["checks"]["text_delta"].keys()
    saved = json.loads((tmp_path / "results" / "zero_vision_sft_smoke.json").read_text())
    assert saved["provenance"]["source_hash"] and saved["checks"]["text_delta"].keys() == {"TextKnow", "TextReason",
                                                                                           "Code"}
    md = section(tmp_path / "results", None, "smoke")
    assert "| eval set | blind |" in md and "(d) scripted oracle + tool" in md and "count (twin)" in md
    assert "(b′) zero-vision + blank picture + tool" in md and "- (b′): vision skills lifted" in md
    # a second call reuses every saved run
    again = run_experiment(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", log=lambda m: None)
    assert again["table"] == res["table"]


def test_section_without_results(tmp_path):
    assert "No results yet" in section(tmp_path, None, "cpu")


class _Row:
    def __init__(self, replay):
        self.meta = {"replay": replay} if replay else {}


def test_batch_order_fixed_set_and_stream():
    """Fixed set: every row draws/len times. Stream: every replay row exactly once, the rest cycled evenly
    (counts differ by at most one), all slots filled; too many replay rows for the slots is refused."""
    from k25mini.experiments.ch06_zero_vision.run import batch_order

    rows = [_Row(False)] * 10 + [_Row(True)] * 10
    o = batch_order(rows, 80, seed=1)
    assert len(o) == 80 and set(np.bincount(o, minlength=20)) == {4}
    rows = [_Row(k % 3 == 0) for k in range(7 + 30)]  # 13 replay rows spread through the set
    rep = [k for k, r in enumerate(rows) if r.meta]
    o = batch_order(rows, 50, seed=1, stream=True)
    counts = np.bincount(o, minlength=len(rows))
    assert len(o) == 50 and all(counts[k] == 1 for k in rep)
    other = [counts[k] for k in range(len(rows)) if k not in rep]
    assert sum(other) == 50 - len(rep) and max(other) - min(other) <= 1
    assert not np.array_equal(o, batch_order(rows, 50, seed=2, stream=True))
    assert np.array_equal(o, batch_order(rows, 50, seed=1, stream=True))
    with pytest.raises(ValueError, match="cannot fill"):
        batch_order(rows, 5, seed=1, stream=True)


def test_stream_config():
    assert config_for("smoke").replay_stream  # the committed design streams its replay
    assert config_for("smoke").key() != config_for("smoke", replay_stream=False).key()
    with pytest.raises(ValueError, match="replay_stream"):
        config_for("smoke", replay_stream=1)
