"""Scripted policies: baselines, warm-start trace generators and test fixtures.

* :class:`ScriptedPolicy` wraps any function ``view -> output``.
* :class:`LookupAgent` is the serial single agent (also used as a frozen subagent): for each item of its
  task it searches, then browses the top hit; it answers from what is *still in its context window*, so a
  window that drops old pages makes it drop items, exactly as a bounded LM context would. It finishes early
  when its steps (or the critical-steps budget) are about to run out.
* :class:`FanOutOrchestrator` creates one worker subagent, assigns the items in chunks in a single turn
  (concurrently) and merges the workers' answers.

Both are stateless (everything comes from the :class:`AgentView`), so one instance can serve many
concurrent agents and episodes. The task format is pluggable: ``items(task) -> list[str]`` reads the item
list, ``extract(item, page_text) -> str | None`` reads one cell, ``render(rows) -> str`` writes an answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from k25mini.agents.policy import AgentView
from k25mini.agents.toolcall import ToolCall
from k25mini.agents.web import hit_page_id


class ScriptedPolicy:
    """A policy from a function ``fn(view)`` (sync or async) returning text / Action / ToolCall(s)."""

    def __init__(self, fn: Callable[[AgentView], Any]) -> None:
        self.fn = fn

    async def act(self, view: AgentView) -> Any:
        out = self.fn(view)
        return await out if inspect.isawaitable(out) else out


def items_after_colon(task: str) -> list[str]:
    """Default task format: ``'... : a, b, c'`` -> ['a', 'b', 'c'] (the text after the last colon)."""
    _, _, tail = task.rpartition(":")
    return [s.strip() for s in tail.replace("\n", ",").split(",") if s.strip()]


def title_line_extract(item: str, page: str) -> str | None:
    """Default cell reader: if the page's first line (title) is the item, return the second line."""
    lines = page.strip().splitlines()
    if lines and lines[0].strip().lower() == item.strip().lower():
        return lines[1].strip() if len(lines) > 1 else ""
    return None


def render_rows(rows: Sequence[tuple[str, str]]) -> str:
    """Default answer: one ``item | value`` line per row."""
    return "\n".join(f"{k} | {v}" for k, v in rows)


def merge_lines(answers: Sequence[str]) -> str:
    """Default merge: the workers' answer lines, de-duplicated, in order."""
    seen: dict[str, None] = {}
    for a in answers:
        for line in a.splitlines():
            if line.strip():
                seen.setdefault(line.strip(), None)
    return "\n".join(seen)


def _pages_in_view(view: AgentView) -> list[str]:
    return [m.content for m in view.messages if m.role == "tool" and m.tool == "browse"]


class LookupAgent:
    """Serial search-then-browse over the task's items; 2 steps per item, then ``finish``."""

    def __init__(
        self,
        items: Callable[[str], list[str]] = items_after_colon,
        query: Callable[[str], str] = lambda item: item,
        extract: Callable[[str, str], str | None] = title_line_extract,
        render: Callable[[Sequence[tuple[str, str]]], str] = render_rows,
        empty_answer: str = "(nothing found)",
    ) -> None:
        self.items, self.query, self.extract, self.render = items, query, extract, render
        self.empty_answer = empty_answer

    def answer(self, view: AgentView) -> str:
        pages = _pages_in_view(view)
        rows = []
        for item in self.items(view.task):
            for page in pages:
                val = self.extract(item, page)
                if val is not None:
                    rows.append((item, val))
                    break
        return self.render(rows) if rows else self.empty_answer

    async def act(self, view: AgentView) -> ToolCall:
        items = self.items(view.task)
        k, phase = divmod(view.step, 2)
        if k >= len(items) or view.steps_left <= 1:
            return ToolCall("finish", {"answer": self.answer(view)})
        if phase == 0:
            return ToolCall("search", {"query": self.query(items[k]), "k": 1})
        last = view.messages[-1] if view.messages else None
        hits = last.data if last is not None and last.tool == "search" and isinstance(last.data, list) else []
        pid = hit_page_id(hits[0]) if hits else None
        # no hit: browse the item name; the error observation is the honest outcome
        return ToolCall("browse", {"page_id": pid if pid is not None else items[k]})


class FanOutOrchestrator:
    """create_subagent → assign_task × ceil(n/chunk) in one turn → finish(merge(answers))."""

    def __init__(
        self,
        items: Callable[[str], list[str]] = items_after_colon,
        chunk_size: int = 1,
        worker_name: str = "worker",
        worker_prompt: str = "You look things up. Search, browse, then finish with one line per item.",
        subtask: Callable[[Sequence[str]], str] = lambda chunk: "Look up: " + ", ".join(chunk),
        merge: Callable[[Sequence[str]], str] = merge_lines,
        empty_answer: str = "(nothing found)",
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.items, self.chunk_size, self.worker_name = items, chunk_size, worker_name
        self.worker_prompt, self.subtask, self.merge = worker_prompt, subtask, merge
        self.empty_answer = empty_answer

    async def act(self, view: AgentView) -> Any:
        if view.step == 0 and view.steps_left > 1:
            return ToolCall("create_subagent", {"name": self.worker_name, "system_prompt": self.worker_prompt})
        if view.step == 1 and view.steps_left > 2:  # subagents need budget beyond this step and the finish
            items = self.items(view.task)
            chunks = [items[i : i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]
            return [ToolCall("assign_task", {"agent": self.worker_name, "prompt": self.subtask(c)}) for c in chunks]
        answers = [m.data["answer"] for m in view.messages
                   if m.tool == "assign_task" and isinstance(m.data, dict) and m.data.get("answer")]
        merged = self.merge(answers)
        return ToolCall("finish", {"answer": merged if merged.strip() else self.empty_answer})
