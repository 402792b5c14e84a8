"""What a swarm LM policy reads and writes: a compact state prompt and compact tool calls.

A ~200k-parameter LM must learn the orchestration decisions in minutes on a CPU, so both sides are short:

* **Prompt** (:func:`render_prompt`): a fixed-width summary of the agent's *bounded context window*
  (:func:`observe`), e.g. ``W n21 r0 h04 p17 c1 L07 e0`` = wide task, 21 items known, 0 region pages still
  to read, 4 rows held, 17 items pending, a subagent template exists, 7 steps left, last call did not fail.
  Fixed width means every prompt has the same token length, so many agents are sampled in one batch.
* **Completion**: tool calls in Kimi's special-token syntax with one-letter tool codes, ended by
  ``<|im_end|>``, e.g. ``<|tool_call_begin|>c<|tool_call_end|><|tool_call_begin|>a3<|tool_call_end|>...``.
  Codes: ``s`` search, ``b`` browse, ``c`` create_subagent, ``aK`` fan out: K assign_task calls that
  split the pending items into K near-equal subtasks (K beyond the pending items gives empty subtasks,
  i.e. spurious parallelism), ``f`` finish. :func:`expand_calls` turns them into the runtime's real tool calls,
  filling the
  arguments (page ids, item names, the answer table) from what is in the context window — the LM decides
  *which* tools, *how many* subagents and *how to split* the work; the codec only resolves references.

Everything here is a pure function of the :class:`~k25mini.agents.AgentView`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from k25mini.agents import DEFAULT_FORMAT, AgentView, ToolCall
from k25mini.swarm.tasks import parse_task, subtask_text
from k25mini.world import parse_markdown_table, table_to_markdown

__all__ = [
    "SwarmState",
    "observe",
    "render_prompt",
    "PROMPT_LEN",
    "END",
    "CODES",
    "compact_call",
    "compact_text",
    "parse_compact",
    "expand_calls",
    "SUBAGENT_NAME",
    "SUBAGENT_PROMPT",
]

END = "<|im_end|>"
CODES = ("s", "b", "c", "a", "f")
SUBAGENT_NAME = "w"
SUBAGENT_PROMPT = "Look up each item: browse its page, then finish with a table."
_PAGE_TITLE_RE = re.compile(r"^(\w+)\n\1 is an? (\w+) (\w+)\.")
_CALL_RE = re.compile(re.escape(DEFAULT_FORMAT.call_begin) + r"([a-z])(\d*)" + re.escape(DEFAULT_FORMAT.call_end))


@dataclass
class SwarmState:
    """What an agent knows now (derived from its context window only)."""

    kind: str  # "wide" | "sub" | "deep"
    task: str
    columns: list[str]
    regions_todo: list[str]  # region pages named by the task and not (any more) in context
    items: list[str]  # item names known (task list or region pages in context)
    rows: dict[str, dict[str, str]]  # name -> row, from entity pages and subagent answers in context
    attempted: set[str]  # items browsed or assigned (per the context)
    created: bool
    steps_left: int
    error: bool
    # deep tasks
    hops: int = 0
    searched: bool = False
    search_top: str | None = None
    path: list[str] = field(default_factory=list)  # entity names browsed in order
    last_page: dict[str, str] | None = None
    attr: str | None = None
    start: str | None = None
    sub_answers: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[str]:
        return [i for i in self.items if i not in self.rows and i not in self.attempted]


def _entity_row(text: str) -> dict[str, str] | None:
    """Attributes read from an entity page's text ({} fields missing if the page was truncated)."""
    m = _PAGE_TITLE_RE.match(text)
    if m is None:
        return None
    name = m.group(1)
    row = {"name": name, "colour": m.group(2), "shape": m.group(3)}
    for key, pat in (("region", r"lives in the (\w+)\."), ("weight", r"weighs (\d+) kg\."),
                     ("speed", r"runs at (\d+) km/h\."), ("friend", r"friend is (\w+)\.")):
        mm = re.search(re.escape(name) + r"(?:'s)? " + pat, text)
        if mm:
            row[key] = mm.group(1)
    return row


def observe(view: AgentView) -> SwarmState:
    """The state of one agent from its task and the messages in its context window."""
    t = parse_task(view.task)
    st = SwarmState(kind=t["kind"], task=view.task, columns=t["columns"], regions_todo=list(t["regions"]),
                    items=list(t["items"]),
                    rows={}, attempted=set(), created=False, steps_left=view.steps_left, error=False,
                    hops=t["hops"], attr=t["attr"], start=t["start"])
    for m in view.messages:
        if m.role != "tool":
            continue
        content = m.content
        if m.tool == "browse":
            if content.startswith("The ") and "\nCreatures of the " in content:
                region = content.split("\n", 1)[0][4:].strip()
                if region in st.regions_todo:
                    st.regions_todo.remove(region)
                names = content.split(": ", 1)[1].rstrip(".").split(", ") if ": " in content else []
                st.items += [n for n in names if n and n != "none" and n not in st.items]
            elif (row := _entity_row(content)) is not None:
                st.rows.setdefault(row["name"], row)
                st.attempted.add(row["name"])
                st.path.append(row["name"])
                st.last_page = row
        elif m.tool == "search" and not content.startswith("error"):
            st.searched = True
            first = content.split("\n", 1)[0]
            st.search_top = first if first.startswith("entity/") else None
        elif m.tool == "create_subagent" and not content.startswith("error"):
            st.created = True
        elif m.tool == "assign_task":
            prompt = (m.args or {}).get("prompt", "")
            st.attempted.update(parse_task(prompt)["items"] if isinstance(prompt, str) else [])
            _, _, body = content.partition("\n")
            if " finished in " in content.split("\n", 1)[0]:
                st.sub_answers.append(body.strip())
                for r in parse_markdown_table(body):
                    name = r.get("name", "").strip()
                    if name:
                        st.rows.setdefault(name, {k: v.strip() for k, v in r.items()})
    # the last observation: did it report an error?
    tools = [m for m in view.messages if m.role == "tool"]
    last = tools[-1].content if tools else ""
    st.error = last.startswith("error") or "did not finish" in last.split("\n", 1)[0]
    if st.kind == "sub":  # a subtask knows its items; rows of other names are not its business
        st.rows = {k: v for k, v in st.rows.items() if k in st.items}
    return st


def _n(x: int, width: int = 2) -> str:
    return str(max(0, min(int(x), 10**width - 1))).zfill(width)


PROMPT_LEN = len("W n00 r0 h00 p00 c0 L00 e0")


def render_prompt(st: SwarmState) -> str:
    """Fixed-width state line (``PROMPT_LEN`` characters)."""
    if st.kind == "deep":
        k, n, r, h, p = "D", st.hops, int(st.searched), len(st.path), max(st.hops - len(st.path), 0)
    else:
        k = "W" if st.kind == "wide" else "S"
        n, r, h, p = len(st.items), len(st.regions_todo), len(st.rows), len(st.pending)
    return f"{k} n{_n(n)} r{_n(r, 1)} h{_n(h)} p{_n(p)} c{int(st.created)} L{_n(st.steps_left)} e{int(st.error)}"


# ------------------------------------------------------------------------------------- completions


def compact_call(code: str, k: int | None = None) -> str:
    if code not in CODES:
        raise ValueError(f"code must be one of {CODES}; got {code!r}")
    arg = "" if k is None else str(int(k))
    return f"{DEFAULT_FORMAT.call_begin}{code}{arg}{DEFAULT_FORMAT.call_end}"


def compact_text(calls: list[tuple[str, int | None]]) -> str:
    """A completion: the compact calls then ``<|im_end|>``."""
    return "".join(compact_call(c, k) for c, k in calls) + END


def parse_compact(text: str) -> list[tuple[str, int | None]] | None:
    """[(code, k)] from a completion, or None when the text is not exactly calls followed by ``<|im_end|>``."""
    body, sep, _ = text.partition(END)
    if not sep:
        return None
    out: list[tuple[str, int | None]] = []
    pos = 0
    for m in _CALL_RE.finditer(body):
        if m.start() != pos:
            return None
        code, digits = m.group(1), m.group(2)
        if code not in CODES or (code == "a") != bool(digits) or (digits and int(digits) < 1):
            return None
        out.append((code, int(digits) if digits else None))
        pos = m.end()
    if pos != len(body) or not out:
        return None
    return out


def _answer(st: SwarmState) -> str:
    if st.kind == "deep":
        if st.last_page is not None and len(st.path) >= st.hops and st.attr in st.last_page:
            return st.last_page[st.attr]
        for a in reversed(st.sub_answers):
            if a.strip():
                return a.strip().splitlines()[-1]
        return "unknown"
    names = st.items if st.kind == "sub" else [n for n in st.items if n in st.rows] + \
        [n for n in st.rows if n not in st.items]
    rows = [st.rows[n] for n in names if n in st.rows]
    if not rows:
        return "(nothing found)"
    return table_to_markdown([{c: r.get(c, "") for c in st.columns} for r in rows], st.columns)


def _deep_next_page(st: SwarmState) -> str:
    if st.path:
        nxt = st.last_page.get("friend") if st.last_page else None
        return f"entity/{nxt.lower()}" if nxt else "none"
    if st.start and not st.start.startswith("the "):
        return f"entity/{st.start.lower()}"
    return st.search_top or "none"


def expand_calls(calls: list[tuple[str, int | None]], st: SwarmState) -> list[ToolCall]:
    """The runtime tool calls that compact ``calls`` stand for in state ``st``."""
    out: list[ToolCall] = []
    pending = list(st.pending)
    regions = list(st.regions_todo)
    for code, k in calls:
        if code == "s":
            q = st.start[4:] if st.kind == "deep" and st.start and st.start.startswith("the ") else \
                (st.start or (regions[0] if regions else " ".join(st.columns)))
            out.append(ToolCall("search", {"query": q, "k": 3}))
        elif code == "b":
            if st.kind == "deep":
                page = _deep_next_page(st)
            elif regions:
                page = f"region/{regions.pop(0)}"
            elif pending:
                page = f"entity/{pending.pop(0).lower()}"
            else:
                page = "none"
            out.append(ToolCall("browse", {"page_id": page}))
        elif code == "c":
            out.append(ToolCall("create_subagent", {"name": SUBAGENT_NAME, "system_prompt": SUBAGENT_PROMPT}))
        elif code == "a":
            n = max(int(k or 1), 1)
            if st.kind == "deep":
                prompts = [st.task] * n
            else:  # K near-equal contiguous chunks of what is still pending (sizes differ by at most one)
                q, r = divmod(len(pending), n)
                sizes = [q + (1 if i < r else 0) for i in range(n)]
                starts = [sum(sizes[:i]) for i in range(n)]
                prompts = [subtask_text(pending[a : a + z], st.columns) for a, z in zip(starts, sizes)]
                pending = []
            out += [ToolCall("assign_task", {"agent": SUBAGENT_NAME, "prompt": pr}) for pr in prompts]
        else:
            out.append(ToolCall("finish", {"answer": _answer(st)}))
    return out

