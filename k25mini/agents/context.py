"""Messages and a bounded context window.

Each agent sees at most ``window`` units of text (characters by default, or tokens when a ``count``
function such as ``lambda s: len(tok.encode(s))`` is given). The system prompt and the task stay pinned;
when the rest no longer fits, the oldest messages are dropped and a single explicit marker message
says how many were dropped. One observation longer than ``max_observation`` is cut with a marker.
Pinned messages may fill at most 3/4 of the window (a longer task is truncated, with a marker).
Nothing is dropped silently, so a policy (and a reader of the trace) can see that it forgot things.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

DROPPED_MARKER = "[context window: {n} earlier message(s) dropped]"
TRUNCATED_MARKER = "…[truncated {n} chars]"


@dataclass
class Message:
    """One message. ``role`` in {system, user, assistant, tool}. Tool messages carry the ``tool`` name, its
    ``args`` and the raw structured result ``data`` (e.g. search hits) for scripted policies; ``data`` is
    not part of the text an LM sees."""

    role: str
    content: str
    tool: str | None = None
    args: dict[str, Any] | None = None
    data: Any = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("data")
        return {k: v for k, v in d.items() if v is not None}


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters including the marker."""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    marker = TRUNCATED_MARKER.format(n=len(text))
    if len(marker) > limit:  # no room for the full marker: keep the ellipsis as the signal
        return text[: limit - 1] + "…"
    keep = limit - len(marker)
    return text[:keep] + TRUNCATED_MARKER.format(n=len(text) - keep)


class ContextWindow:
    """A bounded message list: ``pinned`` messages first, then the most recent ones that fit."""

    def __init__(
        self,
        pinned: list[Message],
        window: int,
        max_observation: int | None = None,
        count: Callable[[str], int] = len,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        self.pinned = [Message(m.role, m.content, m.tool, m.args, m.data) for m in pinned]
        self.window = window
        self.max_observation = max_observation
        self.count = count
        self.recent: list[Message] = []
        self.dropped = 0
        # pinned text may use at most 3/4 of the window, so recent turns always have room; the task (last
        # pinned message) is cut first, then the system prompt
        cap = (3 * window) // 4
        for m in reversed(self.pinned):
            over = sum(count(p.content) for p in self.pinned) - cap
            if over > 0:
                m.content = truncate(m.content, max(len(m.content) - over, 0))

    def size(self) -> int:
        n = sum(self.count(m.content) for m in self.pinned + self.recent)
        return n + (self.count(DROPPED_MARKER.format(n=self.dropped)) if self.dropped else 0)

    def add(self, msg: Message) -> None:
        if msg.role == "tool" and self.max_observation is not None:
            msg.content = truncate(msg.content, self.max_observation)
        self.recent.append(msg)
        while self.size() > self.window and len(self.recent) > 1:
            self.recent.pop(0)
            self.dropped += 1
        if self.size() > self.window and self.recent:
            # the newest message alone does not fit next to the pinned ones: cut it to what is left
            m = self.recent[-1]
            room = self.window - (self.size() - self.count(m.content))
            m.content = truncate(m.content, max(room, 0))

    def messages(self) -> list[Message]:
        """The messages a policy sees now (a copy)."""
        marker = [Message("system", DROPPED_MARKER.format(n=self.dropped))] if self.dropped else []
        return self.pinned + marker + list(self.recent)
