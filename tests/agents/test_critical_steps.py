"""Critical steps = Σ_stages (S_main + max_i S_sub,i), on hand-built traces and on runtime episodes."""

from __future__ import annotations

import asyncio

import pytest

from k25mini.agents import (
    FakeWeb,
    LatencyModel,
    ScriptedPolicy,
    Stage,
    SwarmConfig,
    SwarmRuntime,
    ToolCall,
    critical_steps,
    speedup,
    total_steps,
)


def test_worked_example_balanced_vs_skewed_stage():
    # four 5-step subagents in one stage vs one 20-step and three 1-step subagents
    balanced = [Stage(1, [5, 5, 5, 5])]
    skewed = [Stage(1, [20, 1, 1, 1])]
    assert critical_steps(balanced) == 1 + 5
    assert critical_steps(skewed) == 1 + 20
    assert total_steps(balanced) == 1 + 20
    assert total_steps(skewed) == 1 + 23
    # the same work done serially by one agent costs as many critical steps as total steps
    serial = [Stage(1, [])] * 21
    assert critical_steps(serial) == total_steps(serial) == 21
    assert speedup(balanced) == pytest.approx(21 / 6) and speedup(serial) == 1.0


def test_hand_built_trace_with_mixed_stages_against_a_loop():
    trace = [(1, []), (1, [3, 7]), (1, []), (2, [4]), (1, [1, 1, 1, 9, 2]), (1, [])]
    want_c = want_t = 0
    for main, subs in trace:  # written out the slow way
        longest = 0
        for s in subs:
            longest = s if s > longest else longest
        want_c += main + longest
        want_t += main + sum(subs)
    assert critical_steps(trace) == want_c == 1 + 8 + 1 + 6 + 10 + 1
    assert total_steps(trace) == want_t == 1 + 11 + 1 + 6 + 15 + 1
    assert critical_steps([]) == total_steps([]) == 0


def test_stage_validation():
    with pytest.raises(ValueError, match="main"):
        Stage(-1, [])
    with pytest.raises(ValueError, match="subs"):
        Stage(1, [2, -3])


# ----------------------------------------------------------------------------- through the runtime


class StepsSub:
    """Frozen subagent that takes exactly N steps for the prompt 'steps=N' (N−1 searches, then finish)."""

    def __init__(self, log=None):
        self.log = log

    async def act(self, view):
        if self.log is not None:
            self.log.append(view.agent_id)
        n = int(view.task.split("=")[1])
        if view.step + 1 >= n:
            return ToolCall("finish", {"answer": f"done {n}"})
        return ToolCall("search", {"query": "x"})


def fan_out(sizes):
    def script(view):
        if view.step == 0:
            return ToolCall("create_subagent", {"name": "w", "system_prompt": "count"})
        if view.step == 1:
            return [ToolCall("assign_task", {"agent": "w", "prompt": f"steps={n}"}) for n in sizes]
        return ToolCall("finish", {"answer": "ok"})

    return ScriptedPolicy(script)


WEB = FakeWeb({"p": "x\ny"})
LAT = LatencyModel(llm_step=1.0, tools={"search": 1.0, "browse": 1.0})


def recount_from_steps(ep):
    """Critical steps rebuilt from the step records alone (independent of the stage bookkeeping)."""
    by_stage: dict[int, dict[str, int]] = {}
    for st in ep.steps:
        by_stage.setdefault(st.stage, {}).setdefault(st.agent_id, 0)
        by_stage[st.stage][st.agent_id] += 1
    crit = 0
    for counts in by_stage.values():
        main = counts.pop("main", 0)
        crit += main + max(counts.values(), default=0)
    return crit, len(ep.steps)


@pytest.mark.parametrize("sizes, crit, total", [([5, 5, 5, 5], 1 + 6 + 1, 1 + 21 + 1), ([20, 1, 1, 1], 1 + 21 + 1,
                                                                                         1 + 24 + 1)])
def test_runtime_accounts_the_worked_example_exactly(sizes, crit, total):
    rt = SwarmRuntime(WEB, fan_out(sizes), StepsSub(), SwarmConfig(latency=LAT))
    ep = rt.run_sync("wide task")
    assert ep.finished and ep.answer == "ok"
    assert ep.critical_steps == crit and ep.total_steps == total
    assert recount_from_steps(ep) == (crit, total)
    assert [s.subs for s in ep.stages] == [[], sizes, []]
    # simulated clock: a k-step subagent takes (k−1)·(llm + search) + llm seconds
    longest = max(2 * n - 1 for n in sizes)
    assert ep.wall_clock == pytest.approx(1 + 1 + longest + 1)


def test_single_agent_critical_equals_total():
    def script(view):
        return ToolCall("finish", {"answer": "a"}) if view.step == 6 else ToolCall("search", {"query": "x"})

    from k25mini.agents import SINGLE_AGENT_TOOLS

    ep = SwarmRuntime(WEB, ScriptedPolicy(script), config=SwarmConfig(main_tools=SINGLE_AGENT_TOOLS)).run_sync("t")
    assert ep.critical_steps == ep.total_steps == 7
    assert ep.wall_clock == pytest.approx(7 + 6)


def test_assign_calls_overlap_in_time():
    log: list[str] = []
    cfg = SwarmConfig(latency=LAT, real_time_scale=0.02)
    rt = SwarmRuntime(WEB, fan_out([5, 5, 5, 5]), StepsSub(log), cfg)
    ep = rt.run_sync("wide task")
    subs = ep.subagents
    # simulated: all four start together and end together
    assert len({a.t_start for a in subs}) == 1 and len({a.t_end for a in subs}) == 1
    assert all(a.t_end - a.t_start == pytest.approx(9.0) for a in subs)
    # real: the policy calls interleave (not four sequential blocks) ...
    first_four = log[:4]
    assert len(set(first_four)) == 4


def test_two_episodes_share_one_runtime_concurrently():
    rt = SwarmRuntime(WEB, fan_out([2, 3]), StepsSub(), SwarmConfig(latency=LAT))

    async def both():
        return await asyncio.gather(rt.run("a", episode_id="a"), rt.run("b", episode_id="b"))

    a, b = asyncio.run(both())
    assert a.critical_steps == b.critical_steps == 1 + 4 + 1
    assert set(a.agents) == set(b.agents) == {"main", "w#1", "w#2"}
