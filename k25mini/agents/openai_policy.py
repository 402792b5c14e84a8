"""A swarm policy that asks any OpenAI-compatible chat endpoint (``k25mini serve``, vLLM, ...) what to do.

    orch = OpenAIChatPolicy("http://127.0.0.1:8000/v1", "k25mini-nano")
    sub = OpenAIChatPolicy("http://127.0.0.1:8001/v1", "Qwen/Qwen2.5-1.5B-Instruct", temperature=0.7)
    ep = SwarmRuntime(web, orch, sub, SwarmConfig(max_steps_main=8)).run_sync("Find the colour of: ...")

Each ``act`` sends the agent's context window as chat messages and its tools (``view.tools``) as OpenAI
function schemas built from :data:`~k25mini.agents.runtime.TOOL_SPECS`; the reply's ``tool_calls`` come back
to the runtime as :class:`~k25mini.agents.toolcall.ToolCall` objects, so the tools themselves (the toy web,
``create_subagent``, ``assign_task``, ``finish``) always run locally in the runtime. The orchestrator and the
subagents are separate policy objects, so they may use different endpoints and models.

Mapping of the context: the runtime stores an assistant turn as text with Kimi's tool-call markers; it is parsed
back (:func:`~k25mini.agents.toolcall.parse_tool_calls`) into ``tool_calls`` with ids ``call_<turn>_<j>``, and
the tool observations that follow are sent as ``tool`` messages answering those ids in order. An observation
with no open call (e.g. after the context window dropped the turn that made the call) is sent as a user message.

Failures are ordinary policy failures: an HTTP error, a timeout or a malformed reply raises, and the runtime
records it as an error observation. A 503 (server busy) is retried after its ``Retry-After``, ``retries`` times.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from k25mini.agents.policy import Action, AgentView
from k25mini.agents.runtime import TOOL_DOCS, TOOL_SPECS
from k25mini.agents.toolcall import DEFAULT_FORMAT, ToolCall, format_tool_call, parse_tool_calls

__all__ = ["OpenAIChatPolicy", "tool_schemas", "to_openai_messages"]

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def tool_schemas(tools: tuple[str, ...] | list[str], describe: bool = True) -> list[dict[str, Any]]:
    """OpenAI ``tools`` entries for the runtime's tools (from ``TOOL_SPECS``, and ``TOOL_DOCS`` as descriptions
    unless ``describe`` is False: a small model's context may not hold them)."""
    out = []
    for name in tools:
        if name not in TOOL_SPECS:
            raise ValueError(f"tools must name runtime tools {sorted(TOOL_SPECS)}, got {name!r}")
        spec = TOOL_SPECS[name]
        props = {arg: {"type": _JSON_TYPES.get(typ, "string")} for arg, (typ, _) in spec.items()}
        required = [arg for arg, (_, req) in spec.items() if req]
        out.append({"type": "function", "function": {
            "name": name, "description": TOOL_DOCS.get(name, name) if describe else "",
            "parameters": {"type": "object", "properties": props, "required": required}}})
    return out


def to_openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The runtime's context (``agents.context.Message`` list) as OpenAI chat messages (see module docstring)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    turn = 0

    def close_pending() -> None:
        while pending:  # a call whose observation is missing still needs an answer in the OpenAI format
            out.append({"role": "tool", "tool_call_id": pending.pop(0), "content": "(no result)"})

    for m in messages:
        if m.role == "tool":
            if pending:
                out.append({"role": "tool", "tool_call_id": pending.pop(0), "content": m.content})
            else:
                out.append({"role": "user", "content": f"[{m.tool or 'tool'} result]\n{m.content}"})
            continue
        close_pending()
        if m.role == "assistant":
            parsed = parse_tool_calls(m.content)
            msg: dict[str, Any] = {"role": "assistant", "content": parsed.content or None}
            if parsed.calls:
                ids = [f"call_{turn}_{j}" for j in range(len(parsed.calls))]
                msg["tool_calls"] = [{"id": i, "type": "function",
                                      "function": {"name": c.name, "arguments": json.dumps(c.args)}}
                                     for i, c in zip(ids, parsed.calls)]
                pending = list(ids)
            elif msg["content"] is None:
                msg["content"] = ""
            turn += 1
            out.append(msg)
        else:
            out.append({"role": m.role if m.role in ("system", "user") else "user", "content": m.content})
    close_pending()
    return out


class OpenAIChatPolicy:
    """A policy backed by ``POST {base_url}/chat/completions``. ``api_key``: sent as a Bearer token (default: the
    ``OPENAI_API_KEY`` environment variable, else none); ``extra_body``: more request fields (e.g. vLLM's
    ``top_k``); ``describe_tools=False`` sends the tool schemas without descriptions (a small model's context);
    ``client``: an ``httpx.AsyncClient`` to reuse (one is made per call otherwise, so the policy works from any
    event loop)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, max_tokens: int = 256, seed: int | None = None, tool_choice: str = "auto",
                 parallel_tool_calls: bool = True, timeout_s: float = 120.0, retries: int = 3,
                 describe_tools: bool = True, extra_body: dict[str, Any] | None = None, client: Any = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if tool_choice not in ("auto", "required", "none"):
            raise ValueError(f"tool_choice must be 'auto', 'required' or 'none', got {tool_choice!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.top_p, self.max_tokens = model, temperature, top_p, max_tokens
        self.seed, self.tool_choice, self.parallel_tool_calls = seed, tool_choice, parallel_tool_calls
        self.timeout_s, self.retries, self.extra_body, self.client = timeout_s, retries, dict(extra_body or {}), client
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.describe_tools = bool(describe_tools)
        self.calls = 0  # requests answered (for tests and logs)

    def request_body(self, view: AgentView) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(view.messages),
                                "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if view.tools:
            body["tools"] = tool_schemas(view.tools, self.describe_tools)
            body["tool_choice"] = self.tool_choice
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.seed is not None:
            body["seed"] = self.seed
        body.update(self.extra_body)
        return body

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        own = self.client is None
        client = self.client or httpx.AsyncClient(timeout=self.timeout_s)
        try:
            for attempt in range(self.retries + 1):
                r = await client.post(self.url, json=body, headers=headers)
                if r.status_code == 503 and attempt < self.retries:
                    try:
                        wait = float(r.headers.get("retry-after", "1"))
                    except ValueError:
                        wait = 1.0
                    await asyncio.sleep(min(max(wait, 0.0), 30.0))
                    continue
                if r.status_code != 200:
                    try:
                        detail = r.json()["error"]["message"]
                    except Exception:  # noqa: BLE001 - any non-OpenAI error body
                        detail = r.text[:200]
                    raise RuntimeError(f"{self.url} answered HTTP {r.status_code}: {detail}")
                return r.json()
            raise RuntimeError(f"{self.url} stayed busy (503) after {self.retries} retries")  # pragma: no cover
        finally:
            if own:
                await client.aclose()

    async def act(self, view: AgentView) -> Action | str:
        reply = await self._post(self.request_body(view))
        try:
            choice = reply["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"{self.url} sent a reply without choices[0].message: {str(reply)[:200]}") from None
        self.calls += 1
        text = msg.get("content") or ""
        info = {"endpoint": self.url, "model": self.model, "finish_reason": choice.get("finish_reason"),
                "usage": reply.get("usage")}
        calls: list[ToolCall] = []
        raw_calls = msg.get("tool_calls") or []
        bad = False
        for c in raw_calls:
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except (json.JSONDecodeError, TypeError):
                args = None
            if not isinstance(fn.get("name"), str) or not isinstance(args, dict):
                bad = True
                break
            calls.append(ToolCall(fn["name"], args))
        if not bad:
            return Action(text=text, calls=calls, info=info) if calls else Action(text=text, info=info)
        # a call with arguments that are not a JSON object: hand the runtime the text with the raw call, so its
        # parser reports it as a malformed call the model can see and fix
        fmt = DEFAULT_FORMAT
        parts = [text]
        for c in raw_calls:
            fn = c.get("function") or {}
            name, raw = str(fn.get("name")), str(fn.get("arguments"))
            try:
                parts.append(format_tool_call(name, json.loads(raw)) if isinstance(json.loads(raw), dict) else
                             f"{fmt.call_begin}{name}{fmt.arg_begin}{raw}{fmt.call_end}")
            except (json.JSONDecodeError, TypeError):
                parts.append(f"{fmt.call_begin}{name}{fmt.arg_begin}{raw}{fmt.call_end}")
        return Action(text="".join(parts), info=info)


def main(argv: list[str] | None = None) -> None:
    """``python -m k25mini.agents.openai_policy --url URL --model NAME [--sub-url URL --sub-model NAME]``: one
    wide-search episode of the toy world, the orchestrator and the subagents behind OpenAI-compatible endpoints,
    the toy web local. Prints the episode summary and its item-F1 against the gold table."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m k25mini.agents.openai_policy", description=main.__doc__)
    ap.add_argument("--url", required=True, help="the orchestrator's endpoint, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True, help="the orchestrator's model id (GET /v1/models lists them)")
    ap.add_argument("--sub-url", default=None, help="the subagents' endpoint (default: --url)")
    ap.add_argument("--sub-model", default=None, help="the subagents' model id (default: --model)")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--task", type=int, default=0, help="index of the wide-search task")
    ap.add_argument("--max-steps-main", type=int, default=8)
    ap.add_argument("--max-steps-sub", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--short-context", action="store_true",
                    help="a one-line system prompt, tool schemas without descriptions and a 600-byte context "
                         "window (models with ~1k positions, e.g. the nano preset)")
    ap.add_argument("--context-window", type=int, default=None,
                    help="the agents' context window in UTF-8 bytes (default 8000; 600 with --short-context)")
    ap.add_argument("--trace", default=None, help="write the episode as JSONL here")
    args = ap.parse_args(argv)

    from k25mini.agents.runtime import SwarmConfig, SwarmRuntime
    from k25mini.agents.trace import save_episodes
    from k25mini.world import World
    from k25mini.world.web import Web, make_wide_tasks, score_table

    world = World(args.world_seed)
    tasks = make_wide_tasks(world)
    if not 0 <= args.task < len(tasks):
        ap.error(f"--task must be in [0, {len(tasks)}), got {args.task}")
    task = tasks[args.task]
    kw = dict(max_tokens=args.max_tokens, temperature=args.temperature, describe_tools=not args.short_context)
    orch = OpenAIChatPolicy(args.url, args.model, **kw)
    sub = OpenAIChatPolicy(args.sub_url or args.url, args.sub_model or args.model, **kw)
    window = args.context_window or (600 if args.short_context else 8000)
    # UTF-8 bytes: what the context costs a byte-level model such as k25mini's (a U+FFFD the model wrote is 3)
    cfg = SwarmConfig(max_steps_main=args.max_steps_main, max_steps_sub=args.max_steps_sub, context_window=window,
                      max_observation=min(2000, max(1, window // 2)), count=lambda t: len(t.encode("utf-8", "replace")))
    prompt = "Use the tools; answer with finish(answer=<markdown table>)." if args.short_context else None
    question = f"{task.query} Columns: {', '.join(task.columns)}."
    ep = SwarmRuntime(Web(world), orch, sub, cfg).run_sync(question, system_prompt=prompt)
    print(json.dumps({"task": question, "answer": ep.answer, "summary": ep.summary(),
                      "item_f1": score_table(ep.answer or "", task)["item_f1"],
                      "requests": {"orchestrator": orch.calls, "subagents": sub.calls}}, indent=1, default=str))
    if args.trace:
        save_episodes(args.trace, [ep])


if __name__ == "__main__":
    main()
