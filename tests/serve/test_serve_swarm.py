"""The swarm runtime over HTTP: OpenAIChatPolicy for the orchestrator and the subagents, tools run locally.

* against ``k25mini serve`` on the smoke checkpoint (a random model: the episode runs end to end and ends at its
  step limit, every step an HTTP round trip);
* against two scripted servers (different endpoints and model names for the orchestrator and the subagents), where
  the episode really fans out with parallel ``assign_task`` calls and finishes with the right answer.
"""

from __future__ import annotations

import json
import re

import pytest

from k25mini.agents import FakeWeb, SwarmConfig, SwarmRuntime
from k25mini.agents.context import Message
from k25mini.agents.openai_policy import OpenAIChatPolicy, to_openai_messages, tool_schemas
from k25mini.serve import ScriptedEngine, ServerThread, create_app
from tests.serve.conftest import MODEL

PAGES = {"alpha": "alpha\ncolour: red", "beta": "beta\ncolour: blue", "gamma": "gamma\ncolour: green"}
TASK = "Find the colour of: alpha, beta, gamma"


def _call(name: str, args: dict, i: int) -> str:
    return (f"<|tool_call_begin|>functions.{name}:{i}<|tool_call_argument_begin|>{json.dumps(args)}"
            "<|tool_call_end|>")


def _task(prompt: str) -> str:
    return re.search(r"<\|im_user\|>user<\|im_middle\|>(.*?)<\|im_end\|>", prompt, re.S).group(1)


def _results(prompt: str) -> list[str]:
    return re.findall(r"<\|tool_result_begin\|>(.*?)<\|tool_result_end\|>", prompt, re.S)


def orchestrator_rule(prompt: str, i: int) -> str:
    results = _results(prompt)
    if not results:
        items = [s.strip() for s in _task(prompt).split(":", 1)[1].split(",")]
        calls = [_call("create_subagent", {"name": "w", "system_prompt": "Look up one entity."}, 0)]
        calls += [_call("assign_task", {"agent": "w", "prompt": it}, j + 1) for j, it in enumerate(items)]
        return "Fanning out.<|tool_calls_section_begin|>" + "".join(calls) + "<|tool_calls_section_end|><|im_end|>"
    rows = [m for r in results for m in re.findall(r"^(\w+: \w+)$", r, re.M)]
    return "<|tool_calls_section_begin|>" + _call("finish", {"answer": "\n".join(rows)}, 0) + \
        "<|tool_calls_section_end|><|im_end|>"


def subagent_rule(prompt: str, i: int) -> str:
    item, results = _task(prompt).strip(), _results(prompt)
    if not results:
        return _call("browse", {"page_id": item}, 0) + "<|im_end|>"
    colour = re.search(r"colour: (\w+)", results[-1]).group(1)
    return _call("finish", {"answer": f"{item}: {colour}"}, 0) + "<|im_end|>"


def test_swarm_episode_against_the_checkpoint(model_server):
    # the nano model has 1024 positions: short system prompt, tool schemas without descriptions
    orch = OpenAIChatPolicy(model_server.url, MODEL, max_tokens=16, seed=0, describe_tools=False)
    sub = OpenAIChatPolicy(model_server.url, MODEL, max_tokens=16, seed=1, describe_tools=False)
    rt = SwarmRuntime(FakeWeb(PAGES), orch, sub, SwarmConfig(max_steps_main=3, max_steps_sub=2))
    ep = rt.run_sync(TASK, system_prompt="Use the tools; finish with the answer.")
    assert orch.calls == ep.agents["main"].steps == 3  # every step was one HTTP round trip that got an answer
    assert ep.cutoff == "step_limit" or ep.finished
    main_steps = [s for s in ep.steps if s.agent_id == "main"]
    assert all(s.info.get("endpoint", "").startswith(model_server.url) for s in main_steps)
    assert all("policy_error" not in s.info for s in main_steps)


def test_swarm_fans_out_over_two_endpoints():
    with ServerThread(create_app(ScriptedEngine(orchestrator_rule), "orchestrator-model")) as a, \
            ServerThread(create_app(ScriptedEngine(subagent_rule), "worker-model")) as b:
        web = FakeWeb(PAGES)
        orch = OpenAIChatPolicy(a.url, "orchestrator-model", max_tokens=512)  # four calls need > 256 tokens
        sub = OpenAIChatPolicy(b.url, "worker-model")
        ep = SwarmRuntime(web, orch, sub, SwarmConfig(max_steps_main=4, max_steps_sub=3)).run_sync(TASK)
    assert ep.finished and ep.answer.splitlines() == ["alpha: red", "beta: blue", "gamma: green"]
    assert ep.n_assigned == 3 and ep.max_parallel == 3 and ep.n_errors == 0
    assert sorted(web.calls) == [("browse", "alpha"), ("browse", "beta"), ("browse", "gamma")]  # tools ran locally
    assert orch.calls == 2 and sub.calls == 6
    assert ep.critical_steps == 2 + 2  # 2 main steps + the slowest subagent's 2


def test_context_mapping():
    msgs = [Message("system", "sys"), Message("user", "task"),
            Message("assistant", "ok" + _call("search", {"query": "x"}, 0) + _call("browse", {"page_id": "p"}, 1)),
            Message("tool", "hits", "search"), Message("tool", "page", "browse"), Message("tool", "late", "search"),
            Message("assistant", _call("search", {"query": "y"}, 0)), Message("user", "go on")]
    out = to_openai_messages(msgs)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "tool", "user", "assistant", "tool",
                                        "user"]
    assert out[2]["content"] == "ok" and [c["id"] for c in out[2]["tool_calls"]] == ["call_0_0", "call_0_1"]
    assert out[3] == {"role": "tool", "tool_call_id": "call_0_0", "content": "hits"}
    assert out[7] == {"role": "tool", "tool_call_id": "call_1_0", "content": "(no result)"}
    specs = tool_schemas(("search", "finish"))
    assert specs[0]["function"]["parameters"]["required"] == ["query"]
    with pytest.raises(ValueError, match="tools"):
        tool_schemas(("teleport",))


@pytest.mark.parametrize("kw,match", [({"base_url": "localhost:8000"}, "base_url"), ({"model": ""}, "model"),
                                      ({"tool_choice": "always"}, "tool_choice"), ({"max_tokens": 0}, "max_tokens"),
                                      ({"retries": -1}, "retries"), ({"timeout_s": 0}, "timeout_s")])
def test_policy_checks_its_arguments(kw, match):
    args = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **kw}
    with pytest.raises(ValueError, match=match):
        OpenAIChatPolicy(args.pop("base_url"), args.pop("model"), **args)


def test_http_errors_become_observations(model_server):
    bad = OpenAIChatPolicy(model_server.url, "no-such-model")
    ep = SwarmRuntime(FakeWeb(PAGES), bad, None, SwarmConfig(max_steps_main=2, main_tools=("search", "finish"))) \
        .run_sync(TASK)
    assert ep.cutoff == "step_limit" and ep.errors["raised"] == 2
    assert "HTTP 404" in ep.steps[0].errors[0]


def test_swarm_cli_against_the_server(model_server, capsys, tmp_path):
    from k25mini.agents.openai_policy import main

    main(["--url", model_server.url, "--model", MODEL, "--short-context", "--max-steps-main", "2",
          "--max-steps-sub", "1", "--max-tokens", "8", "--trace", str(tmp_path / "ep.jsonl")])
    out = json.loads(capsys.readouterr().out)
    assert out["requests"]["orchestrator"] == 2 and out["summary"]["main_steps"] == 2
    assert 0.0 <= out["item_f1"] <= 1.0 and (tmp_path / "ep.jsonl").stat().st_size > 0
