"""Episode traces: JSON Lines on disk, and a Gantt-style timeline figure.

File format (one JSON object per line; several episodes may share a file)::

    {"type": "episode", "episode_id", "task", "answer", "finished", "cutoff", "n_created", "config", "summary"}
    {"type": "agent",   "episode_id", ...AgentRecord fields}
    {"type": "stage",   "episode_id", "index", "main", "subs", "agents", "t_start", "t_end"}
    {"type": "step",    "episode_id", ...StepRecord fields}

``summary`` is ``Episode.summary()``: step counts, parallelism, subagent statuses, and the error counters
``errors`` (every kind of ``runtime.ERROR_KINDS``, zeros included) with their total ``n_errors``. Each agent
record carries its own ``errors`` (only the kinds that happened); the episode's counters are their sum and
are recomputed on load. Traces written before the counters existed load with empty counters.

``StepRecord.info`` entries that are not JSON-serialisable (tensors, ...) are left out and listed under
``info["_dropped"]``. ``load_episodes`` rebuilds :class:`Episode` objects whose step counts, critical steps
and summaries equal the originals'.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from k25mini.agents.runtime import AgentRecord, Episode, StageRecord, StepRecord


def _jsonable_info(info: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dropped = []
    for k, v in info.items():
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            dropped.append(k)
    if dropped:
        out["_dropped"] = dropped
    return out


def episode_records(ep: Episode) -> list[dict[str, Any]]:
    """The JSON-ready records of one episode (header first)."""
    eid = ep.episode_id
    recs: list[dict[str, Any]] = [{
        "type": "episode", "episode_id": eid, "task": ep.task, "answer": ep.answer, "finished": ep.finished,
        "cutoff": ep.cutoff, "n_created": ep.n_created, "config": ep.config, "summary": ep.summary(),
    }]
    for a in ep.agents.values():
        recs.append({"type": "agent", "episode_id": eid, **asdict(a)})
    for s in ep.stages:
        recs.append({"type": "stage", "episode_id": eid, **asdict(s)})
    for st in ep.steps:
        d = asdict(st)
        d["info"] = _jsonable_info(st.info)
        recs.append({"type": "step", "episode_id": eid, **d})
    return recs


def save_episodes(path: str | Path, episodes: Episode | list[Episode], append: bool = False) -> Path:
    """Write episodes as JSONL (``append=True`` adds to an existing file). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eps = [episodes] if isinstance(episodes, Episode) else list(episodes)
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for ep in eps:
            for rec in episode_records(ep):
                f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    return path


def _build(cls: type, rec: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in rec.items() if k in names})


def load_episodes(path: str | Path) -> list[Episode]:
    """Read every episode of a JSONL trace file, in file order."""
    eps: dict[str, Episode] = {}
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            kind, eid = rec.get("type"), rec.get("episode_id")
            if kind == "episode":
                eps[eid] = Episode(eid, rec["task"], rec["answer"], rec["finished"], rec["cutoff"],
                                   n_created=rec.get("n_created", 0), config=rec.get("config", {}))
            elif eid not in eps:
                raise ValueError(f"{path}:{n}: {kind} record before its episode header {eid!r}")
            elif kind == "agent":
                a = _build(AgentRecord, rec)
                eps[eid].agents[a.agent_id] = a
            elif kind == "stage":
                eps[eid].stages.append(_build(StageRecord, rec))
            elif kind == "step":
                eps[eid].steps.append(_build(StepRecord, rec))
            else:
                raise ValueError(f"{path}:{n}: unknown record type {kind!r}")
    return list(eps.values())


_COLOURS = {"search": "#4C72B0", "browse": "#55A868", "assign": "#C44E52", "finish": "#8172B2",
            "error": "#DD8452", "tool": "#4C72B0", "none": "#BBBBBB", "create_subagent": "#937860"}


def _step_label(st: StepRecord) -> str:
    """'search' / 'browse' / 'create_subagent' for plain tool steps, else the step kind."""
    return st.calls[0]["name"] if st.kind == "tool" and st.calls else st.kind


def plot_timeline(ep: Episode, ax: Any = None, title: str | None = None, max_rows: int = 40) -> Any:
    """Gantt chart of one episode in simulated time: one row per agent (main on top), one bar per step,
    coloured by what the step did; unfinished subagents are labelled with their status; dotted lines mark
    stage boundaries. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    agents = [a for a in ep.agents.values() if a.role == "main"] + [a for a in ep.agents.values() if a.role != "main"]
    agents = agents[:max_rows]
    row = {a.agent_id: i for i, a in enumerate(agents)}
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(len(agents), 1)))
    else:
        fig = ax.figure
    used: dict[str, str] = {}
    for st in ep.steps:
        if st.agent_id not in row:
            continue
        label = _step_label(st)
        colour = _COLOURS.get(label, _COLOURS["tool"])
        used.setdefault(label, colour)
        t_act = min(max(st.t_act, st.t_start), st.t_end)
        # solid: the policy thinking + its own tool call; faded: waiting for subagents
        busy_end = t_act + (max(st.t_end - t_act, 0.0) if st.kind != "assign" else 0.0)
        ax.barh(row[st.agent_id], max(busy_end - st.t_start, 1e-3), left=st.t_start, height=0.7, color=colour,
                edgecolor="white", lw=0.5)
        if busy_end < st.t_end:
            ax.barh(row[st.agent_id], st.t_end - busy_end, left=busy_end, height=0.7, color=colour, alpha=0.3,
                    edgecolor="white", lw=0.5)
    for s in ep.stages:
        ax.axvline(s.t_end, color="0.7", lw=0.6, ls=":")
    labels = []
    for a in agents:
        tag = "" if a.role == "main" or a.finished else f" [{a.status}]"
        labels.append(f"{a.agent_id}{tag}")
    ax.set_yticks(range(len(agents)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (s)")
    ax.set_title(title or f"critical steps {ep.critical_steps} · total steps {ep.total_steps} · "
                 f"wall clock {ep.wall_clock:g} s", fontsize=10)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in used.items()], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
