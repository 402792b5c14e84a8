"""Issue #22 part 4: the swarm runtime under injected faults.

Each fault alone, then all of them in one episode. For every case: the episode completes, each failed
subtask is recorded with its status and error kind, every completed subtask's answer reaches the
orchestrator (zero lost results), and the episode's error counters equal the sum of the per-agent ones.
Timeouts are short with wide slack; the assertions are on classification, never on elapsed time.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from k25mini.agents import (
    ERROR_KINDS,
    Action,
    AgentRecord,
    FakeWeb,
    LatencyModel,
    ScriptedPolicy,
    SwarmConfig,
    SwarmRuntime,
    ToolCall,
    load_episodes,
    save_episodes,
)

WEB = FakeWeb({"p1": "item1\nvalue1"})
LAT = LatencyModel(llm_step=1.0, tools={"search": 1.0, "browse": 1.0})
HUGE = "row | " + "x" * 50_000
MAX_OBS = 500
STEPS_SUB = 3


class FaultySub:
    """A subagent whose behaviour is named by its task prompt."""

    async def act(self, view):
        kind = view.task
        if kind.startswith("good"):
            return ToolCall("finish", {"answer": f"result of {kind}"})
        if kind == "raise":
            raise RuntimeError("worker crashed")
        if kind == "hang":
            await asyncio.sleep(60)  # far past the subagent timeout; wait_for cancels it
            return ToolCall("finish", {"answer": "never seen"})
        if kind == "none":
            return None
        if kind == "number":
            return 12345
        if kind == "bad_json":
            return '<|tool_call_begin|>finish<|tool_call_argument_begin|>{"answer": <|tool_call_end|>'
        if kind == "answer_not_str":
            return ToolCall("finish", {"answer": ["a", "list"]})
        if kind == "empty_answer":
            return ToolCall("finish", {"answer": "   "})
        if kind == "huge":
            return ToolCall("finish", {"answer": HUGE})
        raise AssertionError(kind)


def fan_out(prompts: list[str]) -> ScriptedPolicy:
    """Create one worker, assign every prompt in one turn, then answer with the finished workers' results
    (read from the observations, as an LM would)."""

    def script(view):
        if view.step == 0:
            return ToolCall("create_subagent", {"name": "w", "system_prompt": "help"})
        if view.step == 1:
            return [ToolCall("assign_task", {"agent": "w", "prompt": p}) for p in prompts]
        answers = [m.data["answer"] for m in view.messages if m.tool == "assign_task" and m.data
                   and m.data["answer"] is not None]
        return ToolCall("finish", {"answer": "\n".join(answers)})

    return ScriptedPolicy(script)


def run(prompts: list[str], **cfg_kw) -> tuple:
    kw = dict(latency=LAT, max_steps_sub=STEPS_SUB, max_observation=MAX_OBS, subagent_timeout_s=0.5)
    kw.update(cfg_kw)
    ep = SwarmRuntime(WEB, fan_out(prompts), FaultySub(), SwarmConfig(**kw)).run_sync("task")
    by_task = {a.task: a for a in ep.subagents}
    return ep, by_task


def expected(**counts: int) -> dict[str, int]:
    out = dict.fromkeys(ERROR_KINDS, 0)
    out.update(counts)
    return out


def assert_consistent(ep) -> None:
    """The record's counters are the per-agent sums, and no finished subagent's answer is lost."""
    total = dict.fromkeys(ERROR_KINDS, 0)
    for a in ep.agents.values():
        for k, n in a.errors.items():
            total[k] += n
    assert ep.errors == total and ep.summary()["errors"] == total
    assert ep.n_errors == sum(total.values()) == ep.summary()["n_errors"]
    assert ep.finished and ep.cutoff is None
    assign_obs = [o for s in ep.steps if s.agent_id == "main" and s.kind == "assign" for o in s.observations]
    for a in ep.subagents:
        if a.finished:
            assert any(o.startswith(f"[{a.agent_id}] finished") for o in assign_obs)
            assert a.answer[: MAX_OBS // 2] in ep.answer  # reached the orchestrator and its final answer
        else:
            assert any(o.startswith(f"[{a.agent_id}] did not finish ({a.status}") for o in assign_obs)
    assert {a.agent_id for a in ep.failed_subagents} == {a.agent_id for a in ep.subagents if not a.finished}


def test_raising_subagent_is_recorded_and_others_kept():
    ep, sub = run(["good1", "raise", "good2"])
    assert_consistent(ep)
    assert sub["raise"].status == "error" and "RuntimeError: worker crashed" in sub["raise"].error
    assert sub["raise"].errors == {"raised": 1}
    assert ep.errors == expected(raised=1)
    assert ep.answer == "result of good1\nresult of good2"


def test_hanging_subagent_times_out_without_hanging_the_episode():
    ep, sub = run(["good1", "hang"], subagent_timeout_s=0.2)
    assert_consistent(ep)
    assert sub["hang"].status == "timeout" and sub["hang"].errors == {"timeout": 1}
    assert ep.errors == expected(timeout=1) and ep.answer == "result of good1"


def test_hanging_subagent_step_times_out_with_policy_timeout():
    ep, sub = run(["hang", "good1"], subagent_timeout_s=None, policy_timeout_s=0.2)
    assert_consistent(ep)
    assert sub["hang"].status == "timeout" and "no output within 0.2 s" in sub["hang"].error
    assert ep.errors == expected(timeout=1)


@pytest.mark.parametrize("kind, status, counts", [
    ("none", "step_limit", {"garbage": STEPS_SUB}),
    ("number", "step_limit", {"garbage": STEPS_SUB}),
    ("bad_json", "step_limit", {"malformed_call": STEPS_SUB}),
    ("answer_not_str", "step_limit", {"malformed_call": STEPS_SUB}),
    ("empty_answer", "invalid_answer", {"garbage": 1}),
])
def test_garbage_from_a_subagent_is_classified(kind, status, counts):
    ep, sub = run(["good1", kind])
    assert_consistent(ep)
    assert sub[kind].status == status and sub[kind].errors == counts
    assert ep.errors == expected(**counts) and ep.answer == "result of good1"


def test_huge_subagent_output_is_truncated_before_the_orchestrator_sees_it():
    ep, sub = run(["huge", "good1"], record_contexts=True)
    assert_consistent(ep)
    huge = sub["huge"]
    assert huge.finished and huge.answer == HUGE  # the full result stays in the record
    assert huge.errors == {"truncated": 1} and ep.errors == expected(truncated=1)
    tag = f"[{huge.agent_id}]"
    report = next(o for s in ep.steps if s.kind == "assign" for o in s.observations if o.startswith(tag))
    assert len(report) <= MAX_OBS and "truncated" in report
    # what the orchestrator's policy saw at its next step is the cut report, not 50k characters
    last_main = [s for s in ep.steps if s.agent_id == "main"][-1]
    seen = [m["content"] for m in last_main.context if m["content"].startswith(tag)]
    assert seen == [report]


def test_malformed_orchestrator_calls_are_counted_and_the_episode_recovers():
    fmt_bad_json = '<|tool_call_begin|>search<|tool_call_argument_begin|>{"query": "x"<|tool_call_end|>'
    script = [
        fmt_bad_json,                                                   # invalid JSON
        ToolCall("teleport", {"to": "mars"}),                           # unknown tool
        ToolCall("search", {}),                                         # missing argument
        ToolCall("assign_task", {"agent": "ghost", "prompt": "good1"}),  # subagent never created
        ToolCall("create_subagent", {"name": "  ", "system_prompt": "x"}),  # empty name
        ToolCall("finish", {"answer": 7}),                              # wrong argument type
        [ToolCall("search", {"query": "a"}), ToolCall("search", {"query": "b"})],  # second one over the limit
        None,                                                           # garbage
        ToolCall("finish", {"answer": "done"}),
    ]
    ep = SwarmRuntime(WEB, ScriptedPolicy(lambda v: script[v.step]), FaultySub(),
                      SwarmConfig(latency=LAT)).run_sync("task")
    assert_consistent(ep)
    assert ep.answer == "done" and ep.agents["main"].steps == len(script)
    assert ep.errors == expected(malformed_call=6, over_limit=1, garbage=1)
    kinds = [s.kind for s in ep.steps]
    assert kinds[:6] == ["error"] * 6 and kinds[-1] == "finish"


def test_mixed_faults_in_one_episode_lose_no_result():
    prompts = ["good1", "raise", "hang", "none", "bad_json", "empty_answer", "huge", "good2", "answer_not_str"]
    ep, sub = run(prompts, subagent_timeout_s=0.3)
    assert_consistent(ep)
    assert {t: a.status for t, a in sub.items()} == {
        "good1": "finished", "raise": "error", "hang": "timeout", "none": "step_limit",
        "bad_json": "step_limit", "empty_answer": "invalid_answer", "huge": "finished", "good2": "finished",
        "answer_not_str": "step_limit"}
    assert ep.errors == expected(raised=1, timeout=1, garbage=STEPS_SUB + 1, truncated=1,
                                 malformed_call=2 * STEPS_SUB)
    assert ep.n_errors == 1 + 1 + STEPS_SUB + 1 + 1 + 2 * STEPS_SUB
    assert ep.n_finished == 3 and len(ep.failed_subagents) == 6
    assert ep.answer.startswith("result of good1\n") and ep.answer.endswith("\nresult of good2")


def test_error_counters_survive_a_trace_round_trip(tmp_path):
    ep, _ = run(["good1", "raise", "none", "huge"])
    (back,) = load_episodes(save_episodes(tmp_path / "t.jsonl", ep))
    assert back.errors == ep.errors and back.summary() == ep.summary()
    assert {a.agent_id: a.errors for a in back.agents.values()} == {a.agent_id: a.errors for a in ep.agents.values()}


def test_count_error_rejects_unknown_kinds_and_negative_counts():
    a = AgentRecord("w#1", "w", "subagent", "main", 0, "", "", 3)
    a.count_error("raised")
    a.count_error("timeout", 0)
    assert a.errors == {"raised": 1}
    with pytest.raises(ValueError, match="unknown error kind 'oops'"):
        a.count_error("oops")
    with pytest.raises(ValueError, match="must be >= 0"):
        a.count_error("raised", -1)


def test_swarm_metrics_report_the_error_total_without_changing_other_numbers():
    from k25mini.swarm.env import episode_metrics
    from k25mini.swarm.tasks import SwarmTask
    from k25mini.world.web import DeepSearchTask

    clean, _ = run(["good1", "good2"])
    faulty, _ = run(["good1", "good2", "raise", "none"])
    task = SwarmTask("deep", "task", deep=DeepSearchTask("t0", "q", "result of good1\nresult of good2", []))
    mc, mf = episode_metrics(clean, task), episode_metrics(faulty, task)
    assert mc["errors"] == 0.0 and mf["errors"] == float(faulty.n_errors) == 1.0 + STEPS_SUB
    assert mc["item_f1"] == mf["item_f1"] == 1.0
    assert mf["unfinished"] == 2.0 and mc["unfinished"] == 0.0


def test_orchestrator_raise_timeout_and_web_errors_are_counted_on_the_main_agent():
    async def flaky(view):
        if view.step == 0:
            raise KeyError("oops")
        if view.step == 1:
            await asyncio.sleep(60)
        if view.step == 2:
            return ToolCall("browse", {"page_id": "missing"})
        if view.step == 3:
            return ToolCall("search", {"query": "x", "k": 0})
        return ToolCall("finish", {"answer": "ok"})

    cfg = SwarmConfig(latency=LAT, policy_timeout_s=0.2)
    ep = SwarmRuntime(WEB, ScriptedPolicy(flaky), FaultySub(), cfg).run_sync("task")
    assert_consistent(ep)
    assert ep.answer == "ok" and ep.agents["main"].steps == 5
    assert ep.errors == expected(raised=1, timeout=1, tool_error=1, malformed_call=1)
    assert ep.agents["main"].errors == {"raised": 1, "timeout": 1, "tool_error": 1, "malformed_call": 1}


# ------------------------------------------------------------------------ malformed call objects, CancelledError

BAD_OBJECTS = {
    "args_none": ToolCall("finish", None),
    "args_list": ToolCall("search", ["x"]),
    "name_not_str": ToolCall(123, {}),
    "args_not_json": ToolCall("search", {"query": object()}),
    "action_text_none": Action(text=None, calls=[ToolCall("finish", {"answer": "x"})]),
    "action_info_not_dict": Action(text="", calls=[ToolCall("finish", {"answer": "x"})], info=5),
    "action_calls_not_list": Action(text="", calls=ToolCall("finish", {"answer": "x"})),
}


@pytest.mark.parametrize("name", sorted(BAD_OBJECTS))
def test_malformed_call_objects_from_the_orchestrator_are_garbage_not_a_crash(name):
    """These outputs used to raise out of ``run`` (TypeError in argument checks or json.dumps)."""
    script = [BAD_OBJECTS[name], ToolCall("finish", {"answer": "done"})]
    ep = SwarmRuntime(WEB, ScriptedPolicy(lambda v: script[v.step]), FaultySub(),
                      SwarmConfig(latency=LAT)).run_sync("task")
    assert_consistent(ep)
    assert ep.answer == "done" and ep.errors == expected(garbage=1)
    first = ep.steps[0]
    assert first.kind == "error" and first.calls == [] and first.observations[0].startswith("error: ")


def test_malformed_call_objects_from_a_subagent_are_garbage_and_good_results_are_kept():
    bad = ToolCall("finish", None)

    def sub(view):
        return bad if view.task == "bad" else ToolCall("finish", {"answer": f"result of {view.task}"})

    cfg = SwarmConfig(latency=LAT, max_steps_sub=STEPS_SUB, max_observation=MAX_OBS)
    ep = SwarmRuntime(WEB, fan_out(["good1", "bad", "good2"]), ScriptedPolicy(sub), cfg).run_sync("task")
    assert_consistent(ep)
    bad_rec = next(a for a in ep.subagents if a.task == "bad")
    assert bad_rec.status == "step_limit" and bad_rec.errors == {"garbage": STEPS_SUB}
    assert ep.answer == "result of good1\nresult of good2"


def test_a_policy_raising_cancelled_error_is_counted_as_raised():
    """A CancelledError raised by a policy (not a cancellation of the episode) used to escape ``gather`` and
    abort the whole episode."""

    async def sub(view):
        if view.task == "cancel":
            raise asyncio.CancelledError()
        return ToolCall("finish", {"answer": f"result of {view.task}"})

    async def web_cancel(query, k):
        raise asyncio.CancelledError()

    workers = fan_out(["good1", "cancel"]).fn  # steps 0-2: create, assign both, answer

    def orch(view):
        if view.step == 0:
            raise asyncio.CancelledError()
        if view.step == 1:
            return ToolCall("search", {"query": "x"})
        return workers(replace(view, step=view.step - 2))

    web = FakeWeb({"p1": "item1\nvalue1"})
    web.search = web_cancel
    ep = SwarmRuntime(web, ScriptedPolicy(orch), ScriptedPolicy(sub), SwarmConfig(latency=LAT)).run_sync("task")
    assert_consistent(ep)
    assert ep.answer == "result of good1"
    assert ep.agents["main"].errors == {"raised": 1, "tool_error": 1}
    cancelled = next(a for a in ep.subagents if a.task == "cancel")
    assert cancelled.status == "error" and cancelled.errors == {"raised": 1}
    assert ep.errors == expected(raised=2, tool_error=1)


def test_a_real_cancellation_of_the_episode_still_propagates():
    async def hang(view):
        await asyncio.sleep(60)

    rt = SwarmRuntime(WEB, ScriptedPolicy(hang), FaultySub(), SwarmConfig(latency=LAT))

    async def main():
        await asyncio.wait_for(rt.run("task"), 0.2)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main())


def test_the_step_a_timed_out_subagent_was_in_is_closed_as_an_error():
    ep, sub = run(["good1", "hang"], subagent_timeout_s=0.2)
    hung = [s for s in ep.steps if s.agent_id == sub["hang"].agent_id]
    assert len(hung) == 1 and hung[0].kind == "error" and "no answer within 0.2 s" in hung[0].errors[0]
