"""Budget sweeps and latency at matched item-F1 for the written swarm (k25mini.experiments.ch08_swarm.written_eval)."""

from __future__ import annotations

import json

import pytest

from k25mini.experiments.ch08_swarm import written_eval as we
from k25mini.swarm.written import WrittenEnv, WrittenTeacher


def _pt(budget, f1, steps):
    return {"budget": budget, "wide": {"item_f1": f1, "critical_steps": steps, "finished": 1.0}}


def test_steps_at_f1_picks_the_fewest_steps_that_reach_the_target():
    curve = [_pt(4, 0.2, 4.0), _pt(8, 0.9, 7.5), _pt(12, 0.95, 11.0), _pt(None, 0.95, 10.5)]
    assert we.steps_at_f1(curve, 0.9) == 7.5
    assert we.steps_at_f1(curve, 0.95) == 10.5  # the unbounded point used fewer steps than budget 12
    assert we.steps_at_f1(curve, 0.96) is None
    assert we.steps_at_f1(curve, 0.0) == 4.0
    with pytest.raises(ValueError, match="target"):
        we.steps_at_f1(curve, 1.5)


def test_matched_latency_targets_the_single_agents_best():
    single = [_pt(4, 0.3, 4.0), _pt(10, 0.8, 9.0), _pt(None, 0.8, 12.0)]
    swarm = [_pt(4, 0.0, 3.5), _pt(6, 0.85, 6.0), _pt(None, 1.0, 6.0)]
    m = we.matched_latency(single, swarm)
    assert m["target_f1"] == 0.8 and m["single_steps"] == 9.0 and m["swarm_steps"] == 6.0
    assert m["ratio"] == pytest.approx(1.5)
    # a swarm that never reaches the single agent's best has no ratio (not a speed-up at lower quality)
    weak = [_pt(None, 0.7, 3.0)]
    assert we.matched_latency(single, weak)["ratio"] is None
    # an explicit target
    assert we.matched_latency(single, swarm, target=0.3)["single_steps"] == 4.0
    with pytest.raises(ValueError, match="non-empty"):
        we.matched_latency([], swarm)


@pytest.fixture(scope="module")
def sets():
    env = WrittenEnv()
    return env, we.world_tasks([3], env, 3, 1)


def test_budget_sweep_of_the_scripted_teacher(sets):
    env, task_sets = sets
    t = WrittenTeacher(widths=(4,), seed=0)
    curve = we.budget_sweep(task_sets, t, t, env, swarm=True, budgets=(2, None))
    low, free = curve
    assert low["budget"] == 2 and free["budget"] is None
    assert low["wide"]["item_f1"] == 0.0 and low["wide"]["critical_steps"] <= 2  # cut off: no answer
    assert free["wide"]["item_f1"] > 0.9 and free["wide"]["finished"] == 1.0
    assert free["deep"]["item_f1"] == 1.0
    assert set(free["wide"]["per_world"]) == {"3"}
    assert free["episodes"] == 4 and not any(free["errors"].values())
    json.dumps(curve)  # results are plain JSON


def test_scripted_curves_unlimited_single_is_never_worse(sets):
    env, task_sets = sets
    small = WrittenEnv(window=400, max_new_tokens=128, max_positions=530)
    curves = we.scripted_curves(task_sets, small, widths=(2,), budgets=(None,))
    assert set(curves) == {"single", "single_unlimited", "swarm_w2"}
    assert curves["single_unlimited"][0]["wide"]["item_f1"] >= curves["single"][0]["wide"]["item_f1"]
    assert curves["single_unlimited"][0]["wide"]["item_f1"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [(), (0,), (True,), ("8",), "8"])
def test_budget_sweep_rejects_bad_budgets(sets, bad):
    env, task_sets = sets
    t = WrittenTeacher(widths=(0,))
    with pytest.raises(ValueError, match="budgets"):
        we.budget_sweep(task_sets, t, t, env, swarm=False, budgets=bad)


def test_scripted_curves_rejects_bad_widths(sets):
    env, task_sets = sets
    for bad in [(), (0,), (True,)]:
        with pytest.raises(ValueError, match="widths"):
            we.scripted_curves(task_sets, env, widths=bad)


def test_cli_refuses_the_final_worlds_without_final(capsys):
    with pytest.raises(SystemExit):
        we.main(["--split", "eval"])
    assert "--final" in capsys.readouterr().err


def test_cli_dev_table(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert we.main(["--split", "dev", "--tasks", "2", "--widths", "4", "--budgets", "4", "none",
                    "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "single_unlimited vs swarm_w4" in text
    data = json.loads(out.read_text())
    assert data["worlds"] == [7] and [p["budget"] for p in data["curves"]["swarm_w4"]] == [4, None]


def test_learned_curves_and_cli_model(tmp_path, capsys, sets):
    """An untrained model swept like the scripted baselines: its errors are counted, nothing is dropped."""
    import torch

    from k25mini.model import K2ForCausalLM
    from k25mini.swarm.train import lm_config
    from k25mini.swarm.written import WrittenPolicy

    env, task_sets = sets
    small = WrittenEnv(window=200, max_new_tokens=24, max_positions=226, max_steps_main=3, max_steps_sub=2)
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(K2ForCausalLM(lm_config(16, 1)).state_dict(), path)
    pol = WrittenPolicy(we.load_text_lm(str(path), 16, 1, small.max_positions), max_new_tokens=24)
    one = [(task_sets[0][0], task_sets[0][1][:1])]
    curves = we.learned_curves(one, small, pol, pol, budgets=(None,))
    assert set(curves) == {"learned_single", "learned_swarm"}
    for c in curves.values():
        assert c[0]["episodes"] == 1 and c[0]["wide"]["item_f1"] == 0.0
        assert {"malformed_call", "raised"} <= set(c[0]["errors"])  # every kind is counted, zeros included

    class Broken(WrittenPolicy):  # a model whose every step is a malformed call: each one is counted
        def generate(self, prompts):
            bad = self.tok.encode('<|tool_call_begin|>browse<|tool_call_argument_begin|>{"page<|tool_call_end|>')
            return [(bad + [self.tok.im_end_id], [0.0] * (len(bad) + 1)) for _ in prompts]

    broken = Broken(pol.model, max_new_tokens=24)
    for swarm in (False, True):
        pt = we.budget_sweep(one, broken, broken, small, swarm=swarm, budgets=(None,))[0]
        assert pt["errors"]["malformed_call"] >= 1 and pt["wide"]["item_f1"] == 0.0
    assert we.main(["--split", "dev", "--tasks", "1", "--widths", "2", "--budgets", "none", "--window", "200",
                    "--max-new-tokens", "24", "--model", str(path), "--hidden", "16", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "learned_single vs learned_swarm" in out and "learned_swarm errors per budget" in out
