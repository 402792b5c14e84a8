"""Tool calls as text, so a language model can emit them as tokens.

The format follows Kimi K2's chat template (one special token per marker)::

    <|tool_calls_section_begin|>
    <|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{"query": "red circle"}<|tool_call_end|>
    <|tool_call_begin|>assign_task<|tool_call_argument_begin|>{"agent": "w", "prompt": "..."}<|tool_call_end|>
    <|tool_calls_section_end|>

The section markers are optional, the ``functions.`` prefix and ``:index`` suffix are optional, and the
argument marker may be left out (``<|tool_call_begin|>search{"query": "x"}<|tool_call_end|>``).
Parsing never raises on model output: every malformed call becomes an error string that the runtime
hands back to the policy as an observation. If the toy tokenizer names its specials differently, pass
a :class:`ToolCallFormat` with its strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCallFormat:
    """The marker strings (each one special token in the tokenizer)."""

    section_begin: str = "<|tool_calls_section_begin|>"
    section_end: str = "<|tool_calls_section_end|>"
    call_begin: str = "<|tool_call_begin|>"
    arg_begin: str = "<|tool_call_argument_begin|>"
    call_end: str = "<|tool_call_end|>"

    def specials(self) -> tuple[str, ...]:
        return (self.section_begin, self.section_end, self.call_begin, self.arg_begin, self.call_end)


DEFAULT_FORMAT = ToolCallFormat()


@dataclass
class ToolCall:
    """A parsed call: tool ``name`` and JSON-object ``args``."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args}


@dataclass
class ParsedAction:
    """What a policy's text means: the well-formed calls, one error string per malformed call, and the
    free text outside the calls (thinking / remarks)."""

    calls: list[ToolCall]
    errors: list[str]
    content: str


_NAME = re.compile(r"^\s*(?:functions\.)?([A-Za-z_][A-Za-z0-9_]*)(?::\d+)?\s*")


def format_tool_call(name: str, args: dict[str, Any] | None = None, fmt: ToolCallFormat = DEFAULT_FORMAT) -> str:
    """The text a model should emit for one call."""
    payload = json.dumps(args or {}, ensure_ascii=False, sort_keys=True)
    # "<|" can only occur inside a JSON string here; writing it as "\u003c|" (the same JSON value) keeps an argument
    # such as "x<|tool_call_end|>y" from being read as a marker that ends the call early
    payload = payload.replace("<|", "\\u003c|")
    return f"{fmt.call_begin}{name}{fmt.arg_begin}{payload}{fmt.call_end}"


def format_tool_calls(calls: list[ToolCall], fmt: ToolCallFormat = DEFAULT_FORMAT) -> str:
    """Several calls wrapped in one section."""
    body = "".join(format_tool_call(c.name, c.args, fmt) for c in calls)
    return f"{fmt.section_begin}{body}{fmt.section_end}"


def _parse_one(body: str, fmt: ToolCallFormat) -> ToolCall | str:
    """Parse the text between call_begin and call_end; a string is an error message."""
    if fmt.arg_begin in body:
        head, _, raw = body.partition(fmt.arg_begin)
        m = _NAME.fullmatch(head)
        if m is None:
            return f"malformed tool call: bad tool name {head.strip()[:40]!r}"
    else:
        m = _NAME.match(body)
        if m is None:
            return f"malformed tool call: no tool name in {body.strip()[:40]!r}"
        raw = body[m.end() :]
    name = m.group(1)
    raw = raw.strip()
    if raw == "":
        return ToolCall(name, {})
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as e:
        return f"malformed tool call {name!r}: arguments are not valid JSON ({e.msg} at char {e.pos})"
    if not isinstance(args, dict):
        return f"malformed tool call {name!r}: arguments must be a JSON object, got {type(args).__name__}"
    return ToolCall(name, args)


def parse_tool_calls(text: str, fmt: ToolCallFormat = DEFAULT_FORMAT) -> ParsedAction:
    """Split model text into tool calls, errors and remaining content. Never raises on bad text."""
    if not isinstance(text, str):
        return ParsedAction([], [f"policy output must be text, got {type(text).__name__}"], "")
    calls: list[ToolCall] = []
    errors: list[str] = []
    content: list[str] = []
    pos = 0
    while True:
        start = text.find(fmt.call_begin, pos)
        if start < 0:
            content.append(text[pos:])
            break
        content.append(text[pos:start])
        body_start = start + len(fmt.call_begin)
        end = text.find(fmt.call_end, body_start)
        nxt = text.find(fmt.call_begin, body_start)
        if end < 0 or (0 <= nxt < end):
            stop = nxt if nxt >= 0 else len(text)
            errors.append(f"malformed tool call: missing {fmt.call_end} after {text[body_start:stop][:40]!r}")
            pos = stop
            continue
        parsed = _parse_one(text[body_start:end], fmt)
        (calls if isinstance(parsed, ToolCall) else errors).append(parsed)
        pos = end + len(fmt.call_end)
    rest = "".join(content)
    # drop markers until none is left: removing one can join its neighbours into a new one
    # ("<|tool_call_<|tool_call_argument_begin|>end|>"), which must not reach the content either
    stray: list[str] = []
    while any(m in rest for m in fmt.specials()):
        for marker in fmt.specials():
            if marker in rest:
                if marker not in (fmt.section_begin, fmt.section_end) and not stray:
                    stray.append(marker)
                rest = rest.replace(marker, "")
    if stray:
        errors.append(f"malformed tool call: stray {stray[0]} outside a call")
    return ParsedAction(calls, errors, rest.strip())
