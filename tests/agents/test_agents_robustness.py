"""Issue item 7: failing subagents are recorded as unfinished; the episode completes and keeps the rest."""

from __future__ import annotations

import asyncio

import pytest

from k25mini.agents import (
    FakeWeb,
    LatencyModel,
    ScriptedPolicy,
    SwarmConfig,
    SwarmRuntime,
    ToolCall,
)
from k25mini.rl import PARLConfig, PARLReward

WEB = FakeWeb({"p1": "item1\nvalue1"})
LAT = LatencyModel(llm_step=1.0, tools={"search": 1.0, "browse": 1.0})


class Mixed:
    """Subagent behaviour chosen by the prompt."""

    async def act(self, view):
        kind = view.task
        if kind == "good":
            return ToolCall("browse", {"page_id": "p1"}) if view.step == 0 else ToolCall("finish", {"answer": "v1"})
        if kind == "raise":
            if view.step == 1:
                raise RuntimeError("model server exploded")
            return ToolCall("search", {"query": "x"})
        if kind == "loop":
            return ToolCall("search", {"query": "x"})  # never finishes
        if kind == "empty":
            return ToolCall("finish", {"answer": "   "})
        if kind == "garbage":
            return "<|tool_call_begin|>finish{not json"  # malformed every time
        if kind == "bad_tools":
            return [ToolCall("assign_task", {"agent": "w", "prompt": "nest"}), ToolCall("finish", {})]
        if kind == "slow":
            await asyncio.sleep(5)
            return ToolCall("finish", {"answer": "too late"})
        if kind == "odd_type":
            return 12345
        if kind == "invalid":
            return ToolCall("finish", {"answer": "not a table"})
        raise AssertionError(kind)


def orchestrator(prompts):
    def script(view):
        if view.step == 0:
            return ToolCall("create_subagent", {"name": "w", "system_prompt": "help"})
        if view.step == 1:
            return [ToolCall("assign_task", {"agent": "w", "prompt": p}) for p in prompts]
        return ToolCall("finish", {"answer": "final"})

    return ScriptedPolicy(script)


KINDS = ["good", "raise", "loop", "empty", "garbage", "bad_tools", "slow", "odd_type", "good"]
EXPECTED = ["finished", "error", "step_limit", "invalid_answer", "step_limit", "step_limit", "timeout",
            "step_limit", "finished"]


def test_every_failure_mode_is_recorded_and_the_episode_completes():
    cfg = SwarmConfig(latency=LAT, max_steps_sub=4, subagent_timeout_s=0.3)
    ep = SwarmRuntime(WEB, orchestrator(KINDS), Mixed(), cfg).run_sync("task")
    assert ep.finished and ep.answer == "final"
    assert [a.status for a in ep.subagents] == EXPECTED
    assert ep.n_assigned == len(KINDS) and ep.n_finished == 2
    # results of the good subagents are kept and reported to the orchestrator
    main_steps = [s for s in ep.steps if s.agent_id == "main"]
    obs = main_steps[1].observations
    assert obs[0].endswith("finished in 2 steps:\nv1") and obs[-1].endswith("v1")
    assert "did not finish (error after 2 steps): error: policy raised RuntimeError" in obs[1]
    assert "did not finish (step_limit after 4 steps)" in obs[2]
    assert "timeout" in obs[6]
    # step accounting still exact: the stage costs 1 + the longest subagent (4 steps)
    assert ep.stages[1].subs == [2, 2, 4, 1, 4, 4, 1, 4, 2]
    assert ep.critical_steps == 1 + (1 + 4) + 1


def test_answer_validator_marks_garbage_answers_unfinished():
    cfg = SwarmConfig(latency=LAT, validate_answer=lambda a: "|" in a)
    ep = SwarmRuntime(WEB, orchestrator(["invalid", "invalid"]), Mixed(), cfg).run_sync("task")
    assert [a.status for a in ep.subagents] == ["invalid_answer"] * 2 and ep.finished


def test_raising_validator_counts_as_invalid():
    def boom(answer):
        raise ValueError("bad validator")

    cfg = SwarmConfig(latency=LAT, validate_answer=boom)
    ep = SwarmRuntime(WEB, orchestrator(["good"]), Mixed(), cfg).run_sync("task")
    assert ep.subagents[0].status == "invalid_answer" and ep.finished


def test_orchestrator_policy_errors_and_web_errors_are_observations():
    calls = {"n": 0}

    def flaky(view):
        calls["n"] += 1
        if view.step == 0:
            raise KeyError("oops")
        if view.step == 1:
            return ToolCall("browse", {"page_id": "missing"})
        if view.step == 2:
            return object()
        return ToolCall("finish", {"answer": "ok"})

    ep = SwarmRuntime(WEB, ScriptedPolicy(flaky), Mixed()).run_sync("task")
    assert ep.finished and ep.answer == "ok" and ep.critical_steps == 4
    assert "policy raised KeyError" in ep.steps[0].observations[0]
    assert "browse failed: KeyError" in ep.steps[1].observations[0]
    assert "expected text" in ep.steps[2].observations[0]


def test_unfinished_subagents_lower_r_finish():
    cfg = SwarmConfig(latency=LAT, max_steps_sub=3)
    ep = SwarmRuntime(WEB, orchestrator(["good", "loop", "raise", "good"]), Mixed(), cfg).run_sync("task")
    r, parts = PARLReward(PARLConfig(lambda1=0.0, lambda2=1.0), total_steps=10)(0.0, ep, step=0)
    assert parts["r_finish"] == pytest.approx(2 / 4) and r == pytest.approx(0.5)


def test_hanging_orchestrator_step_times_out_into_an_observation():
    async def hang(view):
        if view.step == 0:
            await asyncio.sleep(5)
        return ToolCall("finish", {"answer": "ok"})

    cfg = SwarmConfig(latency=LAT, policy_timeout_s=0.05)
    ep = SwarmRuntime(WEB, ScriptedPolicy(hang), Mixed(), cfg).run_sync("task")
    assert ep.finished and "no output within 0.05 s" in ep.steps[0].observations[0]
    with pytest.raises(ValueError, match="policy_timeout_s"):
        SwarmConfig(policy_timeout_s=0)
