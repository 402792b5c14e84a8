"""Chapter 07's Toggle experiment: config validation, the SFT set, the summary's arithmetic, a smoke run."""

from __future__ import annotations

import json

import pytest

from k25mini.experiments.ch07_clipped_rl.toggle import (
    eval_set,
    pool_items,
    pool_set,
    run_toggle,
    sft_rows,
    summarise_toggle,
    toggle_config,
    train_set,
)
from k25mini.sft.worked import final_answer


@pytest.mark.parametrize("kw, msg", [({"iterations": 0}, "iterations"), ({"rho": 0}, "rho"), ({"rho": 101}, "rho"),
                                     ({"lam": 1.5}, "lam"), ({"modes": ("toggle",)}, "modes"),
                                     ({"modes": ("off", "sometimes")}, "modes"), ({"seeds": ()}, "seeds"),
                                     ({"style_mix": (("verbose", 1.0), ("long", 1.0))}, "style_mix"),
                                     ({"style_mix": (("verbose", 0.0),)}, "style_mix"), ({"lr": 0}, "lr"),
                                     ({"scopes": ("task", "batch")}, "scopes"), ({"scopes": ()}, "scopes"),
                                     ({"pool_size": 0}, "pool_size")])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        toggle_config("smoke", **kw)


def test_sets_are_held_apart_and_the_sft_mix_follows_the_weights():
    cfg = toggle_config("smoke", sft_rows=400)
    rows = sft_rows(cfg)
    share = {s: sum(r.meta["style"] == s for r in rows) / len(rows) for s in ("verbose", "concise", "terse")}
    assert abs(share["verbose"] - 0.45) < 0.08 and abs(share["terse"] - 0.1) < 0.05
    assert all(final_answer(r.item.answer) == r.item.meta["final"] for r in rows)  # every row's final answer is right
    ev = eval_set(cfg)
    assert all(it.meta["split"] == "eval" for it in ev)
    assert all(it.meta["split"] == "train" for it in train_set(cfg, "x", 0, 0, 5))
    other = toggle_config("smoke", sft_rows=400, lam=0.5)  # RL knobs change the run key, not the SFT base's
    assert cfg.key() != other.key() and cfg.sft_key() == other.sft_key()


def _run(mode, seed, acc, tokens, s_acc, s_tokens):
    ev = {"acc": acc, "tokens": tokens, "styles": {"verbose": 0.5, "concise": 0.5, "terse": 0.0, "other": 0.0}}
    return {"mode": mode, "seed": seed, "evals": [{"it": 2, **ev}], "sampled": {"acc": s_acc, "tokens": s_tokens},
            "budget": {"budgets": {"arith": 40}}}


def test_summary_compares_each_mode_with_off_of_the_same_seed():
    cfg = toggle_config("smoke", seeds=(0, 1))
    before = {"greedy": {"acc": 0.3, "tokens": 50.0}, "base_checkpoint": "x"}
    runs = [_run("off", 0, 0.40, 50.0, 0.3, 60.0), _run("off", 1, 0.50, 40.0, 0.3, 60.0),
            _run("toggle", 0, 0.38, 40.0, 0.3, 30.0), _run("toggle", 1, 0.50, 36.0, 0.4, 45.0),
            _run("always", 0, 0.2, 20.0, 0.1, 20.0), _run("always", 1, 0.2, 20.0, 0.1, 20.0)]
    s = summarise_toggle(cfg, before, runs)
    t = s["table"]["toggle"]
    assert t["token_change_pct"]["values"] == pytest.approx([-20.0, -10.0])
    assert t["acc_change_pts"]["values"] == pytest.approx([-2.0, 0.0])
    assert t["sampled_token_change_pct"]["values"] == pytest.approx([-50.0, -25.0])
    assert s["table"]["off"]["acc"]["mean"] == pytest.approx(0.45) and "token_change_pct" not in s["table"]["off"]
    assert s["curves"]["toggle"]["1"][0] == {"it": 0, "acc": 0.3, "tokens": 50.0}
    with pytest.raises(ValueError, match="off"):
        summarise_toggle(cfg, before, [r for r in runs if r["mode"] != "off"])


def test_smoke_run_writes_and_then_reuses_results(tmp_path):
    cfg = toggle_config("smoke", seeds=(0,))
    res = run_toggle(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "res", log=lambda *_: None)
    assert set(res["table"]) == {"toggle", "always", "off"}
    files = sorted(p.name for p in (tmp_path / "res" / "rl_toggle" / "smoke").glob("*.json"))
    assert files == ["always-prompt-s0.json", "always-s0.json", "before.json", "off-prompt-s0.json", "off-s0.json",
                     "toggle-prompt-s0.json", "toggle-s0.json"]
    assert set(res["prompt"]["table"]) == {"toggle", "always", "off"}
    assert res["prompt"]["pool_budget"]["n_prompts"] == cfg.pool_size
    pr = json.loads((tmp_path / "res" / "rl_toggle" / "smoke" / "toggle-prompt-s0.json").read_text())
    assert pr["scope"] == "prompt" and "budgets" not in pr["budget"]  # per-prompt values live in the summary once
    run = json.loads((tmp_path / "res" / "rl_toggle" / "smoke" / "toggle-s0.json").read_text())
    assert [c["phase"] for c in run["curve"]] == [0, 0] and len(run["evals"]) == cfg.iterations
    assert run["provenance"]["source_hash"]
    before = (tmp_path / "res" / "rl_toggle" / "smoke" / "off-s0.json").stat().st_mtime_ns
    again = run_toggle(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "res", log=lambda *_: None)
    assert (tmp_path / "res" / "rl_toggle" / "smoke" / "off-s0.json").stat().st_mtime_ns == before
    assert again["table"]["off"]["tokens"] == res["table"]["off"]["tokens"]


def test_prompt_scope_draws_distinct_questions_from_one_fixed_pool():
    cfg = toggle_config("smoke", pool_size=10, items_per_iter=4)
    pool = pool_set(cfg)
    assert [it.prompt for it in pool] == [it.prompt for it in pool_set(cfg)]  # the same pool for every run
    keys = {it.prompt for it in pool}
    for t in range(5):
        batch = pool_items(cfg, pool, seed=1, iteration=t)
        assert len(batch) == 4 and len({it.prompt for it in batch}) == 4 and {it.prompt for it in batch} <= keys
    assert [it.prompt for it in pool_items(cfg, pool, 1, 0)] != [it.prompt for it in pool_items(cfg, pool, 2, 0)]
