"""The swarm runtime on a small fake web: tools, limits, context windows, budgets, text policies."""

from __future__ import annotations

import asyncio

import pytest

from k25mini.agents import (
    DROPPED_MARKER,
    SINGLE_AGENT_TOOLS,
    Action,
    ContextWindow,
    FakeWeb,
    FanOutOrchestrator,
    LatencyModel,
    LookupAgent,
    Message,
    ScriptedPolicy,
    SwarmConfig,
    SwarmRuntime,
    ToolCall,
    format_tool_call,
    run_sync,
    tool_prompt,
)

N_ITEMS = 6
PAGES = {f"p{i}": f"item{i}\nvalue{i}" for i in range(N_ITEMS)}
TASK = "Table of values for: " + ", ".join(f"item{i}" for i in range(N_ITEMS))
LAT = LatencyModel(llm_step=1.0, tools={"search": 1.0, "browse": 1.0})
GOLD = {f"item{i} | value{i}" for i in range(N_ITEMS)}


def rows(answer):
    return set((answer or "").splitlines())


def single(cfg_kwargs=None, policy=None, web=None):
    cfg = SwarmConfig(main_tools=SINGLE_AGENT_TOOLS, latency=LAT, **(cfg_kwargs or {}))
    return SwarmRuntime(web or FakeWeb(PAGES), policy or LookupAgent(), config=cfg)


def test_serial_single_agent_finds_everything_with_a_large_window():
    ep = single().run_sync(TASK)
    assert ep.finished and rows(ep.answer) == GOLD
    assert ep.critical_steps == ep.total_steps == 2 * N_ITEMS + 1
    assert ep.n_assigned == 0 and all(s.in_loss for s in ep.steps)


def test_fan_out_swarm_finds_everything_in_fewer_critical_steps():
    web = FakeWeb(PAGES)
    rt = SwarmRuntime(web, FanOutOrchestrator(chunk_size=2), LookupAgent(), SwarmConfig(latency=LAT))
    ep = rt.run_sync(TASK)
    assert ep.finished and rows(ep.answer) == GOLD
    assert ep.n_created == 1 and ep.n_assigned == 3 and ep.n_finished == 3
    assert ep.critical_steps == 1 + (1 + 5) + 1 and ep.total_steps == 1 + (1 + 15) + 1
    # frozen subagents: recorded, excluded from the orchestrator's loss
    assert len(ep.loss_steps()) == 3 and all(s.agent_id == "main" for s in ep.loss_steps())
    assert all(not s.in_loss for s in ep.steps if s.agent_id != "main")
    assert sum(1 for c in web.calls if c[0] == "browse") == N_ITEMS


def test_small_context_window_drops_old_pages_and_says_so():
    seen = []

    class Spy(LookupAgent):
        async def act(self, view):
            seen.append([m.content for m in view.messages])
            return await super().act(view)

    window = len(tool_prompt(SINGLE_AGENT_TOOLS)) + len(TASK) + 120
    ep = single({"context_window": window}, policy=Spy()).run_sync(TASK)
    found = rows(ep.answer)
    assert ep.finished and found < GOLD and len(found) >= 1  # lost early items, kept the latest
    assert "item5 | value5" in found and "item0 | value0" not in found
    last = seen[-1]
    assert last[0].startswith("Tools") and last[1] == TASK  # pinned system prompt and task
    assert any(DROPPED_MARKER.split("{")[0] in m for m in last)


def test_context_window_unit():
    cw = ContextWindow([Message("system", "S" * 5), Message("user", "T" * 5)], window=60, max_observation=30)
    cw.add(Message("tool", "x" * 100, tool="browse"))
    assert len(cw.recent[-1].content) <= 30 and cw.recent[-1].content.endswith("…[truncated 92 chars]")
    for i in range(5):
        cw.add(Message("assistant", f"a{i}" * 5))
    msgs = cw.messages()
    assert msgs[0].content == "S" * 5 and msgs[1].content == "T" * 5
    assert msgs[2].content == DROPPED_MARKER.format(n=cw.dropped) and cw.dropped >= 1
    assert cw.size() <= 60
    with pytest.raises(ValueError, match="window"):
        ContextWindow([], 0)
    # an over-long task is cut so that recent turns still fit
    cw = ContextWindow([Message("system", "S" * 10), Message("user", "T" * 500)], window=100)
    assert cw.size() <= 75 and "truncated" in cw.pinned[1].content and cw.pinned[0].content == "S" * 10
    cw.add(Message("tool", "obs"))
    assert cw.messages()[-1].content == "obs"


def test_only_one_direct_tool_call_per_step():
    web = FakeWeb(PAGES)

    def script(view):
        if view.step == 0:
            return [ToolCall("search", {"query": f"item{i}"}) for i in range(3)]
        return ToolCall("finish", {"answer": "x"})

    ep = single(policy=ScriptedPolicy(script), web=web).run_sync(TASK)
    assert len(web.calls) == 1
    obs = ep.steps[0].observations
    assert sum(o.startswith("error: at most 1") for o in obs) == 2 and ep.steps[0].kind == "error"
    assert ep.critical_steps == 2


def test_lm_style_text_policy():
    script = [
        "I will search. " + format_tool_call("search", {"query": "item3"}).replace("search", "functions.search:0", 1),
        format_tool_call("browse", {"page_id": "p3"}),
        "<|tool_calls_section_begin|>" + format_tool_call("finish", {"answer": "item3 | value3"})
        + "<|tool_calls_section_end|>",
    ]
    ep = single(policy=ScriptedPolicy(lambda v: Action(script[v.step], info={"tokens": [1, 2]}))).run_sync(TASK)
    assert ep.answer == "item3 | value3" and ep.critical_steps == 3
    assert ep.steps[1].observations == ["item3\nvalue3"] and ep.steps[0].info == {"tokens": [1, 2]}


def test_plain_text_without_tool_call_is_an_observation_not_an_answer():
    ep = single({"max_steps_main": 3}, policy=ScriptedPolicy(lambda v: "the answer is 42")).run_sync(TASK)
    assert not ep.finished and ep.answer is None and ep.cutoff == "step_limit"
    assert "no tool call" in ep.steps[0].observations[0]


def test_critical_steps_budget_cuts_off_a_never_finishing_agent():
    ep = single({"critical_steps_budget": 5},
                policy=ScriptedPolicy(lambda v: ToolCall("search", {"query": "item1"}))).run_sync(TASK)
    assert ep.cutoff == "critical_steps_budget" and ep.answer is None and not ep.finished
    assert ep.critical_steps == 5


def test_budget_aware_single_agent_answers_partially_within_budget():
    ep = single({"critical_steps_budget": 7}).run_sync(TASK)
    assert ep.finished and ep.critical_steps <= 7
    assert rows(ep.answer) == {"item0 | value0", "item1 | value1", "item2 | value2"}


def test_budget_caps_subagents_and_then_cuts_off():
    rt = SwarmRuntime(FakeWeb(PAGES), FanOutOrchestrator(chunk_size=3), LookupAgent(),
                      SwarmConfig(latency=LAT, critical_steps_budget=6))
    ep = rt.run_sync(TASK)
    # stage 0: create (1); stage 1: assign (1 + subs capped at 5 − 2 = 3 steps); stage 2: finish (1)
    assert [s.subs for s in ep.stages] == [[], [3, 3], []]
    assert ep.critical_steps == 6 and ep.finished
    # the budget-aware subagents answered partially on their last step: one item each
    assert all(a.finished and a.step_limit == 3 for a in ep.subagents)
    assert rows(ep.answer) == {"item0 | value0", "item3 | value3"}


def test_orchestrator_that_ignores_the_budget_is_cut_off():
    def script(view):
        if view.step == 0:
            return ToolCall("create_subagent", {"name": "w", "system_prompt": "s"})
        return ToolCall("search", {"query": "item1"})

    rt = SwarmRuntime(FakeWeb(PAGES), ScriptedPolicy(script), LookupAgent(),
                      SwarmConfig(latency=LAT, critical_steps_budget=4))
    ep = rt.run_sync(TASK)
    assert ep.cutoff == "critical_steps_budget" and ep.answer is None and ep.critical_steps == 4
    assert ep.agents["main"].status == "budget"


def test_subagents_that_need_more_steps_than_the_budget_allows_are_marked_budget():
    def sub(view):
        return ToolCall("search", {"query": "x"})  # never finishes

    rt = SwarmRuntime(FakeWeb(PAGES), FanOutOrchestrator(chunk_size=6), ScriptedPolicy(sub),
                      SwarmConfig(latency=LAT, critical_steps_budget=10))
    ep = rt.run_sync(TASK)
    assert [a.status for a in ep.subagents] == ["budget"]
    assert ep.finished and ep.critical_steps == 1 + 1 + 7 + 1


def test_unknown_tool_unknown_agent_and_bad_args_are_observations():
    def script(view):
        if view.step == 0:
            return [ToolCall("teleport", {}), ToolCall("assign_task", {"agent": "ghost", "prompt": "p"}),
                    ToolCall("search", {"query": 3}), ToolCall("create_subagent", {"name": " "})]
        return ToolCall("finish", {"answer": "done"})

    ep = SwarmRuntime(FakeWeb(PAGES), ScriptedPolicy(script), LookupAgent()).run_sync(TASK)
    obs = ep.steps[0].observations
    assert len(obs) == 4 and all(o.startswith("error") for o in obs)
    assert "unknown tool 'teleport'" in obs[0] and "no subagent named 'ghost'" in obs[1]
    assert ep.n_assigned == 0 and ep.finished


def test_single_agent_cannot_spawn():
    def script(view):
        if view.step == 0:
            return ToolCall("create_subagent", {"name": "w", "system_prompt": "s"})
        return ToolCall("finish", {"answer": "a"})

    ep = single(policy=ScriptedPolicy(script)).run_sync(TASK)
    assert "unknown tool" in ep.steps[0].observations[0] and ep.n_created == 0


def test_sync_act_async_web_and_run_sync_inside_a_running_loop():
    class AsyncWeb(FakeWeb):
        async def search(self, query, k=5):
            await asyncio.sleep(0)
            return super().search(query, k)

    class SyncPolicy:
        def act(self, view):
            return ToolCall("search", {"query": "item2"}) if view.step == 0 else ToolCall("finish", {"answer": "z"})

    rt = single(policy=SyncPolicy(), web=AsyncWeb(PAGES))

    async def inside_loop():
        return run_sync(rt.run(TASK))  # e.g. a Jupyter cell

    ep = asyncio.run(inside_loop())
    assert ep.answer == "z" and "[p2] item2" in ep.steps[0].observations[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_steps_main": 0}, "max_steps_main"), ({"critical_steps_budget": 0}, "critical_steps_budget"),
     ({"main_tools": ("search",)}, "finish"), ({"sub_tools": ("assign_task", "finish")}, "sub_tools"),
     ({"main_tools": ("fly", "finish")}, "unknown")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SwarmConfig(**kwargs)


def test_bad_runtime_arguments():
    with pytest.raises(ValueError, match="web"):
        SwarmRuntime(object(), LookupAgent())
    with pytest.raises(ValueError, match="subagent"):
        SwarmRuntime(FakeWeb({}), FanOutOrchestrator())
    with pytest.raises(ValueError, match="task"):
        single().run_sync("  ")
