"""Swarm glue: codec, environment plumbing, PARL in the loop, loss masking, frozen subagents, determinism."""

from __future__ import annotations

import pytest
import torch

from k25mini.agents import AgentView, Message
from k25mini.rl import PARLConfig
from k25mini.swarm.codec import PROMPT_LEN, compact_text, expand_calls, observe, parse_compact, render_prompt
from k25mini.swarm.env import EnvConfig, episode_metrics, make_runtime, run_episodes
from k25mini.swarm.policy import LMPolicy, ScriptedSwarmPolicy
from k25mini.swarm.tasks import make_swarm_tasks, parse_task, score_answer, subtask_text
from k25mini.swarm.train import RLConfig, build_lm, frozen_copy, rl_train, sequences_from_episodes
from k25mini.world import World

ENV = EnvConfig(n_entities=24, min_rows=3, max_rows=12, budget=8, max_steps_main=14, max_steps_sub=6)


@pytest.fixture(scope="module")
def world():
    return World(3, n_entities=ENV.n_entities, scale="smoke")


@pytest.fixture(scope="module")
def tasks(world):
    return make_swarm_tasks(world, 3, 1, ENV.min_rows, ENV.max_rows)


def _view(task: str, messages: list[Message], left: int = 5) -> AgentView:
    return AgentView("main", "main", "main", task, messages, 0, 10, left, left, ("search", "browse", "finish"))


def test_parse_task_and_subtask_roundtrip():
    t = parse_task("Make a table of all creatures that live in the north or the coast. Columns: name, weight, speed.")
    assert t["kind"] == "wide" and t["regions"] == ["north", "coast"] and t["columns"] == ["name", "weight", "speed"]
    s = parse_task(subtask_text(["Bolo", "Kami"], ["name", "weight"]))
    assert s["kind"] == "sub" and s["items"] == ["Bolo", "Kami"] and s["columns"] == ["name", "weight"]
    assert parse_task(subtask_text([], ["name"]))["items"] == []
    d = parse_task("How heavy is the friend of the red star?")
    assert d["kind"] == "deep" and d["hops"] == 2 and d["attr"] == "weight" and d["start"] == "the red star"


def test_compact_roundtrip_and_malformed():
    calls = [("c", None), ("a", 3), ("a", 12), ("f", None)]
    assert parse_compact(compact_text(calls)) == calls
    for bad in ["", "<|im_end|>", "<|tool_call_begin|>b<|tool_call_end|>",  # no end / no calls
                "<|tool_call_begin|>a<|tool_call_end|><|im_end|>",  # assign needs a count
                "<|tool_call_begin|>b2<|tool_call_end|><|im_end|>", "x<|tool_call_begin|>b<|tool_call_end|><|im_end|>",
                "<|tool_call_begin|>q<|tool_call_end|><|im_end|>", "<|tool_call_begin|>a0<|tool_call_end|><|im_end|>"]:
        assert parse_compact(bad) is None, bad
    with pytest.raises(ValueError, match="code"):
        compact_text([("z", None)])


def test_observe_and_expand(world):
    task = "Make a table of all creatures that live in the north. Columns: name, weight, friend."
    region = world.pages["region/north"]
    names = region.split(": ", 1)[1].rstrip(".").split(", ")
    first = world.pages[f"entity/{names[0].lower()}"]
    st = observe(_view(task, [Message("tool", region, "browse"), Message("tool", first, "browse")]))
    assert st.items == names and list(st.rows) == [names[0]] and st.pending == names[1:]
    line = render_prompt(st)
    assert len(line) == PROMPT_LEN and line.startswith(f"W n{len(names):02d} r0 h01 p{len(names) - 1:02d} c0 L05")
    calls = expand_calls([("c", None), ("a", 2), ("a", 1), ("b", None)], st)
    assert [c.name for c in calls] == ["create_subagent", "assign_task", "assign_task", "assign_task", "browse"]
    rest = names[1:]
    half = (len(rest) + 1) // 2  # near-equal split, the first chunk takes the odd one
    assert parse_task(calls[1].args["prompt"])["items"] == rest[:half]
    assert parse_task(calls[2].args["prompt"])["items"] == rest[half:]
    assert parse_task(calls[3].args["prompt"])["items"] == []  # nothing left: an empty (spurious) subtask
    assert calls[4].args["page_id"] == "none"
    many = expand_calls([("a", len(rest) + 2)], st)
    assert [len(parse_task(c.args["prompt"])["items"]) for c in many] == [1] * len(rest) + [0, 0]
    fin = expand_calls([("f", None)], st)[0]
    assert fin.name == "finish" and f"| {names[0]} |" in fin.args["answer"]


def test_scripted_swarm_beats_single_on_critical_steps(world, tasks):
    worker = ScriptedSwarmPolicy("worker")
    fan = ScriptedSwarmPolicy("orchestrator", p_parallel=1.0, fanout=(64,))
    wide = [t for t in tasks if t.kind == "wide"]
    single = run_episodes(make_runtime(world, worker, None, ENV, swarm=False, budget=None), wide)
    swarm = run_episodes(make_runtime(world, fan, worker, ENV, swarm=True, budget=None), wide)
    assert len(single) == len(swarm) == len(wide) > 0
    for es, ew, t in zip(single, swarm, wide, strict=True):
        ms, mw = episode_metrics(es, t), episode_metrics(ew, t)
        assert mw["item_f1"] == pytest.approx(1.0) and ms["item_f1"] == pytest.approx(1.0)
        assert ms["critical_steps"] == ms["total_steps"] == t.n_rows + 1 + len(parse_task(t.text)["regions"])
        assert mw["critical_steps"] < ms["critical_steps"] and mw["total_steps"] >= mw["critical_steps"]
        assert mw["n_assigned"] == t.n_rows and mw["unfinished"] == 0
    assert score_answer(wide[0], None)["item_f1"] == 0.0


def test_budget_makes_serial_infeasible(world, tasks):
    worker = ScriptedSwarmPolicy("worker")
    wide = [t for t in tasks if t.kind == "wide" and t.n_rows + 3 > ENV.budget]
    assert wide, "fixture should contain a task longer than the budget"
    eps = run_episodes(make_runtime(world, worker, None, ENV, swarm=False), wide)
    assert len(eps) == len(wide)
    for e, t in zip(eps, wide, strict=True):
        m = episode_metrics(e, t)
        assert m["critical_steps"] <= ENV.budget and m["item_f1"] < 1.0


def _small_lm(seed: int):
    return build_lm(seed, hidden=32, layers=2)


def test_lm_policy_garbage_is_observation_not_crash(world, tasks):
    pol = LMPolicy(_small_lm(0), temperature=1.0, max_new_tokens=6, seed=0)  # untrained: emits garbage
    eps = run_episodes(make_runtime(world, pol, LMPolicy(_small_lm(1), frozen=True, max_new_tokens=6), ENV,
                                    swarm=True), tasks[:2])
    assert len(eps) == 2
    for e in eps:
        assert e.critical_steps <= ENV.budget
        main = [s for s in e.steps if s.role == "main"]
        assert main and all(s.kind in ("error", "none") for s in main)  # nothing parseable: observations only
        assert any("no tool call" in o or o.startswith("error") for s in main for o in s.observations)
        assert e.cutoff is not None and e.answer is None


def _rl_run(world, tasks, seed, iterations=1, parl=None):
    orch = _small_lm(seed)
    sub = frozen_copy(_small_lm(100))
    sub_pol = LMPolicy(sub, frozen=True, max_new_tokens=6)
    cfg = RLConfig(iterations=iterations, tasks_per_iter=1, group_size=2, max_new_tokens=6, lr=1e-2,
                   parl=parl or PARLConfig())
    hist = rl_train(orch, world, tasks, ENV, cfg, subagent=sub_pol, seed=seed)
    return orch, sub, hist


def test_rl_changes_orchestrator_not_frozen_subagent(world, tasks):
    before_sub = {k: v.clone() for k, v in frozen_copy(_small_lm(100)).state_dict().items()}
    before = {k: v.clone() for k, v in _small_lm(0).state_dict().items()}
    orch, sub, hist = _rl_run(world, tasks, 0)
    assert hist[0]["n_seqs"] > 0
    assert any(not torch.equal(before[k], v) for k, v in orch.state_dict().items())
    for k, v in sub.state_dict().items():
        assert torch.equal(before_sub[k], v), k
    assert all(p.grad is None and not p.requires_grad for p in sub.parameters())


def test_subagent_tokens_never_in_loss(world, tasks):
    fan = ScriptedSwarmPolicy("orchestrator", p_parallel=1.0, fanout=(3,))
    sub = LMPolicy(_small_lm(1), frozen=True, max_new_tokens=6)
    eps = run_episodes(make_runtime(world, fan, sub, ENV, swarm=True, budget=None), tasks[:2])
    assert len(eps) == 2
    for e in eps:  # scripted steps carry no logp; give main steps fake ones to see what gets selected
        for s in e.steps:
            if s.role == "main":
                s.info["logp"] = [0.0] * len(s.info["completion_ids"])
    n_sub_steps = sum(s.role == "subagent" for e in eps for s in e.steps)
    assert n_sub_steps > 0 and all("logp" in s.info for e in eps for s in e.steps if s.role == "subagent")
    seqs = sequences_from_episodes(eps, torch.zeros(len(eps)))
    main_steps = [s for e in eps for s in e.steps if s.role == "main"]
    assert len(seqs) == len(main_steps)
    assert [p for p, *_ in seqs] == [s.info["prompt_ids"] for s in main_steps]


def test_rl_deterministic_by_seed_and_anneal_reaches_zero(world, tasks):
    parl = PARLConfig(lambda1=0.5, lambda2=0.5, anneal_end=0.5)
    o1, _, h1 = _rl_run(world, tasks, 5, iterations=2, parl=parl)
    o2, _, h2 = _rl_run(world, tasks, 5, iterations=2, parl=parl)
    assert h1 == h2
    assert o1.state_dict().keys() == o2.state_dict().keys()
    for (k, a), b in zip(o1.state_dict().items(), o2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert h1[0]["lambda1"] == 0.5 and h1[1]["lambda1"] == 0.0 and h1[1]["lambda2"] == 0.0


# ------------------------------------------------------------------------------------- acceptance logic

_METRICS = ("item_f1", "success", "critical_steps", "total_steps", "wall_clock", "avg_parallel", "unfinished",
            "cutoff", "finished", "n_assigned")


def _agg(f1: float, cs: float, par: float = 0.0, unf: float = 0.0, finished: float = 1.0) -> dict[str, float]:
    row = dict.fromkeys(_METRICS, 0.0)
    row.update(item_f1=f1, critical_steps=cs, total_steps=cs, wall_clock=cs, avg_parallel=par, unfinished=unf,
               n_assigned=par, finished=finished, cutoff=1.0 - finished)
    return {"wide": row, "deep": dict(row)}


def _fake_seed(single_finished: float, single_cs: float, swarm_par: list[float], swarm_f1: float = 0.8,
               single_f1: float = 0.7) -> dict:
    hist = [dict(_agg(swarm_f1, 10.0, p)["wide"], iteration=float(i)) for i, p in enumerate(swarm_par)]
    var = {v: {"history": hist, "eval": _agg(swarm_f1, 10.0, swarm_par[-1], unf=0.5)} for v in
           ("full", "no_r_parallel", "no_r_finish", "no_anneal")}
    var["no_r_parallel"] = {"history": [dict(h, avg_parallel=0.0) for h in hist], "eval": _agg(0.6, 10.0, 0.0)}
    var["no_r_finish"] = {"history": hist, "eval": _agg(0.6, 10.0, 6.0, unf=2.0)}
    return {"single_unbounded": _agg(single_f1, single_cs, finished=single_finished), "single": _agg(0.5, 10.0),
            "swarm_warm": _agg(0.6, 10.0), "variants": var}


def test_ratio_against_single_agent_that_never_finishes_is_not_a_pass():
    from k25mini.experiments.ch08_swarm import summarize

    # the single agent runs to its 40-step limit without answering: the 4x "speed-up" must not count
    bad = summarize({str(s): _fake_seed(0.0, 40.0, [0.0] * 6) for s in range(3)})
    assert bad["critical_steps_ratio"]["mean"] == pytest.approx(4.0)
    assert bad["acceptance"]["critical_steps_ratio_ge_3"] is False
    assert bad["acceptance"]["single_agent_finishes"] is False
    assert bad["acceptance"]["parallelism_rises_during_rl_every_seed"] is False
    assert bad["acceptance"]["swarm_parallelises_every_seed"] is False
    assert not any(c["ratio_counts"] for c in bad["per_seed"].values())
    good = summarize({str(s): _fake_seed(1.0, 31.0, [0.5, 1.0, 1.5, 4.0, 5.0, 6.0]) for s in range(3)})
    acc = good["acceptance"]
    assert acc["critical_steps_ratio_ge_3"] and acc["single_agent_finishes"]
    assert acc["parallelism_rises_during_rl_every_seed"] and acc["swarm_parallelises_every_seed"]
    assert acc["no_r_parallel_lower_parallelism"] and acc["no_r_finish_more_unfinished"]
    # equal ratio but the swarm is less accurate than the single agent: no pass
    worse = summarize({str(s): _fake_seed(1.0, 31.0, [1.0] * 6, swarm_f1=0.6) for s in range(3)})
    assert worse["acceptance"]["critical_steps_ratio_ge_3"] is False


def test_report_section_from_results_dir(tmp_path):
    import json

    from k25mini.experiments.ch08_swarm import PAPER, summarize
    from k25mini.experiments.ch08_swarm.report import markdown_section

    assert "No `results/swarm_*.json`" in markdown_section(tmp_path)
    per_seed = {str(s): _fake_seed(0.0, 40.0, [0.0] * 6) for s in range(3)}
    res = {"config": {"scale": "cpu"}, "seeds": [0, 1, 2], "per_seed": per_seed, "summary": summarize(per_seed),
           "paper": PAPER}
    (tmp_path / "swarm_smoke.json").write_text(json.dumps(dict(res, config={"scale": "smoke"})))
    assert "scale `smoke`" in markdown_section(tmp_path) and "plumbing check" in markdown_section(tmp_path)
    (tmp_path / "swarm_cpu.json").write_text(json.dumps(res))
    assert "scale `smoke`" not in markdown_section(tmp_path)  # smoke is shown only when it is all there is
    (tmp_path / "swarm_attempts.json").write_text(json.dumps({"attempts": [
        {"change": "baseline", "scale": "cpu", "seeds": [0], "single": "x", "swarm": "y", "parallel_curve": "z",
         "verdict": "failed"}]}))
    md = markdown_section(tmp_path)
    assert md.startswith("## Chapter 08") and "### Agent Swarm / PARL" in md and "scale `cpu`" in md
    assert "critical_steps_ratio_ge_3 = False" in md and "| 1 | baseline |" in md


def test_run_experiment_seeds_in_processes_match_one_process(tmp_path):
    """``workers=2`` runs each seed in its own spawned process: the results are identical to one process, and the
    JSON is written once, with a note saying how it was run."""
    import json
    from dataclasses import replace

    from k25mini.experiments.ch08_swarm import default_config, run_experiment

    cfg = replace(default_config("smoke"), seeds=[0, 1], variants=["full"], budgets=[None])
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="workers"):
            run_experiment(cfg, tmp_path / "bad", workers=bad)
    assert not (tmp_path / "bad").exists()
    one = run_experiment(cfg, tmp_path / "one", workers=1, log=lambda m: None)
    two = run_experiment(cfg, tmp_path / "two", workers=2)
    assert json.dumps(one["per_seed"], sort_keys=True) == json.dumps(two["per_seed"], sort_keys=True)
    assert "note" not in one and "2 concurrent processes" in two["note"]
    assert json.loads((tmp_path / "two" / "swarm_smoke.json").read_text())["per_seed"] == two["per_seed"]
