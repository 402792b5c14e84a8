"""The one interface a policy implements, and what it sees.

    class MyPolicy:
        async def act(self, view: AgentView) -> str | Action | ToolCall | list[ToolCall]: ...

``act`` may also be a plain (non-async) method. Returning text means "this is what the model emitted":
the runtime parses tool calls out of it (``toolcall.parse_tool_calls``), so an LM policy just returns its
decoded tokens. Scripted policies may return structured calls. ``Action.info`` is kept in the trace step
(e.g. token ids and sampler log-probs that the RL trainer needs as π_old).

A remote chat endpoint is one more class with this method: the runtime does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from k25mini.agents.context import Message
from k25mini.agents.toolcall import ToolCall


@dataclass
class AgentView:
    """What a policy sees at one step.

    ``messages`` is the bounded context window (system prompt, task, then recent turns; a marker message
    says when older ones were dropped). ``steps_left`` is how many more steps this agent may take,
    counting this one (its step limit, and for the main agent also the critical-steps budget);
    ``budget_left`` is the episode's remaining critical-steps budget (None: unlimited).
    """

    agent_id: str
    name: str
    role: str  # "main" or "subagent"
    task: str
    messages: list[Message]
    step: int
    max_steps: int
    steps_left: int
    budget_left: int | None
    tools: tuple[str, ...]


@dataclass
class Action:
    """A policy's output: raw ``text`` (parsed for tool calls when ``calls`` is None), or explicit ``calls``
    (then ``text`` is only commentary, shown before the formatted calls in the agent's context)."""

    text: str = ""
    calls: list[ToolCall] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    def act(self, view: AgentView) -> Any:
        """Return (or return an awaitable of) str | Action | ToolCall | list[ToolCall]."""
        ...


_ROLE_TOKEN = {
    "system": "<|im_system|>",
    "user": "<|im_user|>",
    "assistant": "<|im_assistant|>",
    "tool": "<|im_system|>",
}


def render_messages(messages: list[Message], add_generation_prompt: bool = True) -> str:
    """A context as one string in Kimi's chat layout, using the toy tokenizer's special tokens::

        <|im_system|>system<|im_middle|>...<|im_end|><|im_user|>user<|im_middle|>...<|im_end|>
        <|im_system|>tool<|im_middle|><|tool_result_begin|>...<|tool_result_end|><|im_end|>

    With ``add_generation_prompt`` it ends with ``<|im_assistant|>assistant<|im_middle|>`` for the model to
    continue. An LM policy may use its own template instead; the runtime never looks at this string.
    """
    parts = []
    for m in messages:
        body = f"<|tool_result_begin|>{m.content}<|tool_result_end|>" if m.role == "tool" else m.content
        parts.append(f"{_ROLE_TOKEN.get(m.role, '<|im_system|>')}{m.role}<|im_middle|>{body}<|im_end|>")
    if add_generation_prompt:
        parts.append("<|im_assistant|>assistant<|im_middle|>")
    return "".join(parts)
