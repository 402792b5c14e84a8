"""The swarm's web: the encyclopedia behind ``search``/``browse``, wide- and deep-search tasks, and
a WideSearch-style table scorer (item-F1, row-F1, exact-table success; see paper_facts §7).

A wide task asks for a table over *every* entity matching a predicate; filling it needs one browse
per row, which is more than one small agent's context and step budget hold, so a single agent must
drop rows while parallel subagents need not.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from k25mini.world.entities import ATTRIBUTES, REGIONS, Entity
from k25mini.world.render import COLOURS, SHAPES
from k25mini.world.rng import rng_for
from k25mini.world.scoring import normalize
from k25mini.world.world import World

__all__ = [
    "Web",
    "WideSearchTask",
    "DeepSearchTask",
    "make_wide_tasks",
    "make_deep_tasks",
    "parse_markdown_table",
    "table_to_markdown",
    "score_table",
    "score_deep",
    "COLUMNS",
]

_WORD = re.compile(r"[a-z0-9]+")
COLUMNS: tuple[str, ...] = ("name",) + ATTRIBUTES  # the columns a wide-search table may ask for


# ============================================================================================ web
class Web:
    """Search and browse over ``world.pages``.

    ``search(query, k)`` ranks pages by summed IDF of the query words they contain (title words count
    double; ties by page id) and returns page ids. ``browse(page_id)`` returns the page text or raises
    ``KeyError``. Each call costs ``step_cost[action]`` steps and ``latency[action]`` simulated
    seconds; totals accumulate in ``steps`` / ``elapsed`` and every call is logged in ``calls``.
    """

    def __init__(
        self,
        world: World,
        search_latency: float = 0.3,
        browse_latency: float = 0.5,
        search_steps: int = 1,
        browse_steps: int = 1,
    ) -> None:
        for name, v in (("search_latency", search_latency), ("browse_latency", browse_latency)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name, v in (("search_steps", search_steps), ("browse_steps", browse_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        self.pages: dict[str, str] = dict(world.pages)
        self.step_cost: dict[str, int] = {"search": search_steps, "browse": browse_steps}
        self.latency: dict[str, float] = {"search": float(search_latency), "browse": float(browse_latency)}
        self.steps = 0
        self.elapsed = 0.0
        self.calls: list[tuple[str, str]] = []
        self._tokens = {pid: Counter(_WORD.findall(text.lower())) for pid, text in self.pages.items()}
        self._title = {pid: set(_WORD.findall(text.split("\n", 1)[0].lower())) for pid, text in self.pages.items()}
        df = Counter(w for toks in self._tokens.values() for w in toks)
        n = len(self.pages)
        self._idf = {w: math.log(1 + n / c) for w, c in df.items()}

    def _charge(self, action: str, arg: str) -> None:
        self.calls.append((action, arg))
        self.steps += self.step_cost[action]
        self.elapsed += self.latency[action]

    def cost(self, action: str) -> tuple[int, float]:
        """(steps, simulated seconds) one call of ``action`` ('search' | 'browse') costs."""
        if action not in self.step_cost:
            raise ValueError(f"action must be 'search' or 'browse', got {action!r}")
        return self.step_cost[action], self.latency[action]

    def search(self, query: str, k: int = 5) -> list[str]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        query = "" if query is None else str(query)
        self._charge("search", query)
        words = set(_WORD.findall(query.lower()))
        scored = []
        for pid, toks in self._tokens.items():
            s = sum(self._idf[w] * (2.0 if w in self._title[pid] else 1.0) for w in words if w in toks)
            if s > 0:
                scored.append((-s, pid))
        return [pid for _, pid in sorted(scored)[:k]]

    def browse(self, page_id: str) -> str:
        page_id = str(page_id).strip()
        self._charge("browse", page_id)
        if page_id not in self.pages:
            raise KeyError(f"no page {page_id!r}; page ids look like 'entity/<name>' or 'region/<region>'")
        return self.pages[page_id]

    def reset_counters(self) -> None:
        self.steps, self.elapsed, self.calls = 0, 0.0, []


# ============================================================================================ tasks
@dataclass
class WideSearchTask:
    """'A table of all creatures with property P, with columns C' and its gold table."""

    task_id: str
    query: str
    columns: list[str]  # required columns, in order
    key_columns: list[str]  # join key (always ['name'] here)
    rows: list[dict[str, str]]  # the gold table
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gold_markdown(self) -> str:
        return table_to_markdown(self.rows, self.columns)


@dataclass
class DeepSearchTask:
    """A question whose answer needs several hops through pages (``hops``: the pages on the path)."""

    task_id: str
    question: str
    answer: str
    hops: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def _predicates(world: World) -> list[tuple[str, str, Any]]:
    """Candidate predicates as (description, kind, argument)."""
    preds: list[tuple[str, str, Any]] = []
    for r in REGIONS:
        preds.append((f"that live in the {r}", "region", (r,)))
    for a in REGIONS:
        for b in REGIONS:
            if a < b:
                preds.append((f"that live in the {a} or the {b}", "region", (a, b)))
    for c in COLOURS:
        preds.append((f"that are {c}", "colour", c))
    for s in SHAPES:
        preds.append((f"shaped like a {s}", "shape", s))
    for t in (10, 20, 30, 40):
        preds.append((f"that weigh more than {t} kg", "weight>", t))
        preds.append((f"that weigh at most {t} kg", "weight<=", t))
    for t in (5, 10, 15):
        preds.append((f"that run faster than {t} km/h", "speed>", t))
    return preds


def _matches(e: Entity, kind: str, arg: Any) -> bool:
    if kind == "region":
        return e.region in arg
    if kind == "colour":
        return e.colour == arg
    if kind == "shape":
        return e.shape == arg
    if kind == "weight>":
        return e.weight > arg
    if kind == "weight<=":
        return e.weight <= arg
    return e.speed > arg  # speed>


def make_wide_tasks(
    world: World, n: int | None = None, min_rows: int = 3, max_rows: int | None = None, n_columns: int = 3
) -> list[WideSearchTask]:
    """``n`` wide-search tasks with between ``min_rows`` and ``max_rows`` gold rows and ``n_columns``
    required columns (``name`` is always the first, the key)."""
    n = world.sizes.wide_tasks if n is None else n
    ne = len(world.entities)
    max_rows = ne if max_rows is None else max_rows
    for name, v, lo in (("n", n, 0), ("min_rows", min_rows, 1), ("max_rows", max_rows, 1), ("n_columns", n_columns, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if max_rows < min_rows:
        raise ValueError(f"max_rows must be >= min_rows ({min_rows}), got {max_rows}")
    if n_columns > len(COLUMNS):
        raise ValueError(f"n_columns must be <= {len(COLUMNS)}, got {n_columns}")
    cands = []
    for desc, kind, arg in _predicates(world):
        sel = [e for e in world.entities if _matches(e, kind, arg)]
        if min_rows <= len(sel) <= max_rows:
            cands.append((desc, kind, arg, sel))
    if not cands and n > 0:
        raise ValueError(f"no predicate selects {min_rows}..{max_rows} of {ne} entities; widen min_rows/max_rows")
    tasks = []
    for i in range(int(n)):
        rng = rng_for(world.seed, "wide", i)
        desc, kind, arg, sel = cands[int(rng.integers(len(cands)))]
        others = [c for c in ATTRIBUTES if c != kind.rstrip("<=>")]
        extra = [others[int(j)] for j in sorted(rng.choice(len(others), size=n_columns - 1, replace=False))]
        cols = ["name"] + extra
        rows = [{c: e.value(c) for c in cols} for e in sorted(sel, key=lambda e: e.name)]
        query = f"Make a table of all creatures {desc}. Columns: {', '.join(cols)}."
        tasks.append(
            WideSearchTask(
                f"wide-{world.seed}-{i}",
                query,
                cols,
                ["name"],
                rows,
                {"predicate": kind, "argument": arg, "lookups": len(rows) + 1},
            )
        )
    return tasks


_HOP_Q = {
    "region": "Where does {x} live?",
    "weight": "How heavy is {x}?",
    "speed": "How fast is {x}?",
    "colour": "What colour is {x}?",
    "shape": "What shape is {x}?",
    "friend": "Who is {x}'s friend?",
}


def make_deep_tasks(world: World, n: int | None = None, hops: int = 2) -> list[DeepSearchTask]:
    """Questions like 'Where does the friend of the friend of the red star live?': the start is named by
    its look (needs a search), each 'friend of' is one more browse."""
    n = world.sizes.deep_tasks if n is None else n
    for name, v, lo in (("n", n, 0), ("hops", hops, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    tasks = []
    for i in range(int(n)):
        rng = rng_for(world.seed, "deep", i)
        e = world.entities[int(rng.integers(len(world.entities)))]
        by_look = rng.random() < 0.5
        start = f"the {e.colour} {e.shape}" if by_look else e.name
        path = [e]
        for _ in range(hops - 1):
            path.append(world.entity(path[-1].friend))
        attr = ("region", "weight", "speed", "colour", "shape")[int(rng.integers(5))]
        subject = start
        for _ in range(hops - 1):
            subject = f"the friend of {subject}"
        q = _HOP_Q[attr].format(x=subject)
        q = q[0].upper() + q[1:]
        tasks.append(
            DeepSearchTask(
                f"deep-{world.seed}-{i}",
                q,
                path[-1].value(attr),
                [f"entity/{p.name.lower()}" for p in path],
                {"attr": attr, "start": e.name, "by_look": by_look, "hops": hops},
            )
        )
    return tasks


def score_deep(task: DeepSearchTask, prediction: Any) -> float:
    """Exact match after normalisation (BrowseComp-style accuracy); never raises."""
    try:
        return float(normalize(prediction) == normalize(task.answer))
    except Exception:
        return 0.0


# ============================================================================================ tables
def table_to_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _norm_col(c: Any) -> str:
    return "_".join(str(c).strip().strip("*`").lower().split())


def _norm_cell(v: Any) -> str:
    s = " ".join(str(v).replace("<br>", " ").split()).strip("*`\"' ").lower()
    s = re.sub(r"\s*(kg|km/h)$", "", s)  # units are allowed in cells
    try:
        f = float(s)
        if math.isfinite(f):
            return str(int(f)) if f == int(f) else repr(f)
    except ValueError:
        pass
    return s


_SEPARATOR = re.compile(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?")
_FENCED = re.compile(r"```markdown(.*?)```", re.DOTALL)


def parse_markdown_table(text: Any) -> list[dict[str, str]]:
    """Rows of the first pipe table in ``text``: a header line, a separator line of ``-`` cells (any number of
    dashes, optional ``:`` alignment: ``|-|``, ``| --- |``, ``|:-:|``), then rows until a line without ``|``;
    further separator-only lines among the rows are skipped. A fenced ```` ```markdown ```` block, if there is
    one, is read first (WideSearch's extractor does the same). [] if there is no table."""
    if not isinstance(text, str):
        return []
    fenced = _FENCED.findall(text)
    for block in [*fenced, text] if fenced else [text]:
        lines = [ln.strip() for ln in block.splitlines()]
        for i in range(len(lines) - 1):
            if "|" in lines[i] and not _SEPARATOR.fullmatch(lines[i]) and _SEPARATOR.fullmatch(lines[i + 1] or "x"):
                header = [h.strip() for h in lines[i].strip("|").split("|")]
                rows = []
                for ln in lines[i + 2 :]:
                    if "|" not in ln:
                        break
                    if _SEPARATOR.fullmatch(ln):
                        continue
                    cells = [c.strip() for c in ln.strip("|").split("|")]
                    rows.append({h: (cells[j] if j < len(cells) else "") for j, h in enumerate(header)})
                return rows
    return []


def _as_rows(pred: Any) -> list[dict[str, str]]:
    if isinstance(pred, str):
        return parse_markdown_table(pred)
    if isinstance(pred, dict):
        pred = [pred]
    out = []
    try:
        for r in pred:
            if isinstance(r, dict):
                out.append(r)
    except TypeError:
        return []
    return out


def score_table(pred: Any, task: WideSearchTask) -> dict[str, float]:
    """WideSearch scoring of a predicted table (markdown string or list of row dicts) against ``task``.

    Columns are matched by normalised name, and as in WideSearch's evaluation a table whose columns are not
    exactly the required ones (one missing, or one extra) scores 0 (WideSearch first asks an LLM to map
    differently named columns; there is no judge here, so names must match after normalisation);
    rows are de-duplicated on the key (of rows that share a key but disagree, the worst-scoring one counts, so
    the result is invariant to row order) and inner-joined with the gold rows on it; a cell scores 1 on an
    exact normalised match (key cells 1 by the join). Item P/R = summed cell scores over
    ``n_pred_rows * |columns|`` / ``n_gold_rows * |columns|``; rows score the min of their cells.
    ``success`` = same rows and values as the gold table. Never raises on malformed predictions.
    """
    zero = {
        "item_f1": 0.0,
        "row_f1": 0.0,
        "success": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "row_precision": 0.0,
        "row_recall": 0.0,
    }
    try:
        cols = [_norm_col(c) for c in task.columns]
        keys = [_norm_col(c) for c in task.key_columns]
        gold = {}
        for r in task.rows:
            nr = {_norm_col(k): _norm_cell(v) for k, v in r.items()}
            gold.setdefault(tuple(nr[k] for k in keys), nr)
        by_key: dict[tuple, list[list[str]]] = {}
        for r in _as_rows(pred):
            nr = {_norm_col(k): _norm_cell(v) for k, v in r.items()}
            if set(nr) != set(cols):
                return zero  # a required column is missing or an extra one present (WideSearch: mismatch -> 0)
            by_key.setdefault(tuple(nr[k] for k in keys), []).append([nr[c] for c in cols])
        if not by_key or not gold:
            return zero

        def cells_of(key: tuple, vals: list[str]) -> list[float]:
            g = gold.get(key)
            if g is None:
                return [0.0] * len(cols)
            return [1.0 if (c in keys or v == g[c]) else 0.0 for c, v in zip(cols, vals)]

        # rows sharing a key count once; when they disagree, the worst-scoring one counts (ties: the smallest
        # values), so the score depends neither on the order of the rows nor on listing alternatives
        rows = [min(cands, key=lambda vals, k=key: (sum(cells_of(k, vals)), vals)) for key, cands in by_key.items()]
        item_tp, row_tp = 0.0, 0.0
        for key, vals in zip(by_key, rows):
            cells = cells_of(key, vals)
            item_tp += sum(cells)
            row_tp += min(cells)
        p = item_tp / (len(rows) * len(cols))
        rc = item_tp / (len(gold) * len(cols))
        rp, rr = row_tp / len(rows), row_tp / len(gold)
        f1 = 2 * p * rc / (p + rc) if p + rc > 0 else 0.0
        rf1 = 2 * rp * rr / (rp + rr) if rp + rr > 0 else 0.0
        success = float(len(rows) == len(gold) and row_tp == len(gold))
        return {
            "item_f1": f1,
            "row_f1": rf1,
            "success": success,
            "precision": p,
            "recall": rc,
            "row_precision": rp,
            "row_recall": rr,
        }
    except Exception:  # malformed predictions score zero; they never end an episode
        return zero
