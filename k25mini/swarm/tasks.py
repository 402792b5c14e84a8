"""Swarm tasks from the toy world: wide-search tables over region predicates and multi-hop deep questions.

A wide task ("Make a table of all creatures that live in the north or the coast. Columns: ...") needs one
region page per region, then one entity page per row: ~rows + 3 critical steps for a serial agent, which a
critical-steps budget below that makes infeasible. A subtask ("Look up: Bolo, Kami. Columns: ...") is what
the orchestrator hands a subagent. A deep task is the world's multi-hop question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from k25mini.world import (
    DeepSearchTask,
    WideSearchTask,
    World,
    make_deep_tasks,
    make_wide_tasks,
    score_deep,
    score_table,
)

__all__ = ["SwarmTask", "make_swarm_tasks", "score_answer", "subtask_text", "parse_task"]

_REGION_RE = re.compile(r"live in the (\w+)(?: or the (\w+))?")
_COLS_RE = re.compile(r"Columns: ([^.]*)\.")
_LOOKUP_RE = re.compile(r"^Look up: ([^.]*)\.")


@dataclass
class SwarmTask:
    """One episode's task: ``kind`` is "wide" or "deep"; ``text`` is what the agent is given."""

    kind: str
    text: str
    wide: WideSearchTask | None = None
    deep: DeepSearchTask | None = None

    @property
    def n_rows(self) -> int:
        return len(self.wide.rows) if self.wide is not None else 0


def subtask_text(items: list[str], columns: list[str]) -> str:
    """The prompt of one assign_task: the items to look up and the table's columns."""
    names = ", ".join(items) if items else "(none)"
    return f"Look up: {names}. Columns: {', '.join(columns)}."


def parse_task(text: str) -> dict[str, Any]:
    """Read a task text: {"kind": "wide"|"sub"|"deep", "regions", "items", "columns", "hops", "attr", "start"}."""
    cols_m = _COLS_RE.search(text)
    columns = [c.strip() for c in cols_m.group(1).split(",")] if cols_m else []
    out: dict[str, Any] = {"kind": "deep", "regions": [], "items": [], "columns": columns, "hops": 0,
                           "attr": None, "start": None}
    look = _LOOKUP_RE.match(text)
    if look is not None:
        out["kind"] = "sub"
        out["items"] = [s.strip() for s in look.group(1).split(",") if s.strip() and s.strip() != "(none)"]
        return out
    if text.startswith("Make a table"):
        out["kind"] = "wide"
        m = _REGION_RE.search(text)
        out["regions"] = [r for r in (m.groups() if m else ()) if r]
        return out
    low = text.lower()
    out["hops"] = low.count("the friend of") + 1
    for attr, cue in (("region", "where does"), ("weight", "how heavy"), ("speed", "how fast"),
                      ("colour", "what colour"), ("shape", "what shape"), ("friend", "who is")):
        if low.startswith(cue):
            out["attr"] = attr
    m = re.search(r"(?:the friend of )*(the \w+ \w+|\w+)(?:'s friend)?\?$", text.rstrip())
    start = m.group(1) if m else ""
    if out["attr"] == "friend":  # "Who is X's friend?": one extra hop is reading X's page
        start = re.sub(r"'s friend$", "", start)
    out["start"] = start
    return out


def make_swarm_tasks(world: World, n_wide: int, n_deep: int, min_rows: int = 6, max_rows: int = 30,
                     hops: int = 2) -> list[SwarmTask]:
    """``n_wide`` wide tasks over region predicates (rows in [min_rows, max_rows]) then ``n_deep`` deep tasks."""
    if n_wide < 0 or n_deep < 0:
        raise ValueError(f"n_wide and n_deep must be >= 0; got {n_wide}, {n_deep}")
    wide: list[WideSearchTask] = []
    if n_wide:
        pool = [t for t in make_wide_tasks(world, 40 * n_wide + 40, min_rows=min_rows, max_rows=max_rows)
                if t.meta["predicate"] == "region"]
        if not pool:
            raise ValueError(f"no region task with {min_rows}..{max_rows} rows in {world!r}")
        wide = [pool[i % len(pool)] for i in range(n_wide)]
    deep = make_deep_tasks(world, n_deep, hops=hops) if n_deep else []
    return [SwarmTask("wide", t.query, wide=t) for t in wide] + [SwarmTask("deep", t.question, deep=t) for t in deep]


def score_answer(task: SwarmTask, answer: str | None) -> dict[str, float]:
    """{"item_f1", "success"}: WideSearch item-F1 / exact table for wide tasks, exact match for deep ones.
    A cut-off episode (``answer is None``) scores as the empty answer."""
    if task.kind == "wide":
        assert task.wide is not None
        s = score_table(answer or "", task.wide)
        return {"item_f1": s["item_f1"], "success": s["success"]}
    assert task.deep is not None
    acc = score_deep(task.deep, answer or "")
    return {"item_f1": acc, "success": acc}
