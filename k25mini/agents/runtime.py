"""The Agent Swarm runtime: a main agent (the orchestrator) with tools, frozen subagents, exact step
accounting and a simulated clock.

Tools of the main agent (``SwarmConfig.main_tools``): ``search(query, k?)``, ``browse(page_id)``,
``create_subagent(name, system_prompt)``, ``assign_task(agent, prompt)``, ``finish(answer)``. Subagents get
``search``, ``browse``, ``finish`` (``sub_tools``). A single agent is the same runtime with
``main_tools=SINGLE_AGENT_TOOLS``.

One main-agent turn is one *stage*: it costs 1 step, then its tool calls run. Direct tools (search /
browse; at most ``max_direct_calls`` per turn, so a turn cannot hide a serial scan) and every
``assign_task`` of that turn run concurrently (``asyncio.gather``); each assignment launches a fresh
subagent instance (context = the named template's system prompt + the task prompt). The stage costs
1 + max(subagent steps) critical steps and 1 + Σ(subagent steps) total steps. A subagent's answer (or its
failure) comes back to the orchestrator as a tool observation; subagent steps are recorded with
``in_loss=False``.

Failures never crash an episode: a policy that raises, a malformed tool call, an unknown tool, a web
error, a subagent that runs past its step limit / real-time timeout or finishes with an answer that
fails ``validate_answer`` — each becomes an observation and, for subagents, an unfinished status.
Every such error is also counted by kind (``ERROR_KINDS``) on the agent that caused it
(``AgentRecord.errors``); ``Episode.errors`` sums them and ``Episode.summary()`` reports the counters and
their total. A subagent's report to the orchestrator is cut to ``max_observation`` characters (the full
answer stays in ``AgentRecord.answer``), and the cut is counted as ``truncated``.

Critical-steps budget: before each main turn the remaining budget is checked; subagents launched in a
turn get at most (remaining − 2) steps (one for that turn, one kept for a final ``finish``), so the
episode never exceeds the budget and a swarm can always still answer. When the budget (or the
main agent's step limit) is used up without ``finish``, the episode is *cut off*: ``answer`` is None,
``cutoff`` names the reason; score it as an empty answer. Subagent results already gathered are kept in
the trace (and count for r_parallel / r_finish) but are not turned into an answer.

Simulated time: every policy step costs ``latency.llm_step`` and each tool call its tool latency; a
stage ends when its slowest branch ends. With ``real_time_scale > 0`` the runtime also sleeps
latency × scale real seconds, so concurrency can be observed on a real clock.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from k25mini.agents.context import ContextWindow, Message, truncate
from k25mini.agents.critical import Stage, critical_steps, total_steps
from k25mini.agents.policy import Action, AgentView, Policy
from k25mini.agents.toolcall import DEFAULT_FORMAT, ToolCall, ToolCallFormat, format_tool_calls, parse_tool_calls
from k25mini.agents.web import maybe_await, render_hits, render_page

SWARM_TOOLS = ("search", "browse", "create_subagent", "assign_task", "finish")
SINGLE_AGENT_TOOLS = ("search", "browse", "finish")
SUBAGENT_TOOLS = ("search", "browse", "finish")
DIRECT_TOOLS = ("search", "browse")

#: tool name -> (argument name -> (type, required)); also a compact spec to put in system prompts.
TOOL_SPECS: dict[str, dict[str, tuple[type, bool]]] = {
    "search": {"query": (str, True), "k": (int, False)},
    "browse": {"page_id": (str, True)},
    "create_subagent": {"name": (str, True), "system_prompt": (str, True)},
    "assign_task": {"agent": (str, True), "prompt": (str, True)},
    "finish": {"answer": (str, True)},
}

TOOL_DOCS: dict[str, str] = {
    "search": "search(query, k=5): find pages; returns lines '[page_id] title: snippet'",
    "browse": "browse(page_id): read one page",
    "create_subagent": "create_subagent(name, system_prompt): define a reusable subagent",
    "assign_task": "assign_task(agent, prompt): launch a new instance of a subagent on a task; several "
    "calls in one turn run concurrently; each returns one message when done",
    "finish": "finish(answer): give the final answer and stop",
}

UNFINISHED = ("step_limit", "budget", "error", "timeout", "invalid_answer")

#: What the runtime counts, per agent, when something goes wrong (see ``AgentRecord.errors``):
#: ``raised``: a policy (or the code around a subagent) raised an exception;
#: ``timeout``: a policy step ran past ``policy_timeout_s`` or a subagent past ``subagent_timeout_s``;
#: ``garbage``: a policy returned something that is neither text nor tool calls (None, a number, ...), a
#: malformed call object (ToolCall args not a JSON-encodable dict, name not a string; Action text / info / calls
#: of the wrong type), or a subagent's final answer failed ``validate_answer``;
#: ``truncated``: a subagent's report was longer than ``max_observation`` and was cut before it entered the
#: orchestrator's context;
#: ``malformed_call``: a tool call that could not be parsed (bad JSON, missing markers), names an unknown or
#: forbidden tool, lacks / mistypes an argument, or names a subagent that was never created;
#: ``over_limit``: a well-formed call refused by a per-turn limit (``max_direct_calls``, ``max_parallel``);
#: ``tool_error``: search / browse raised in the web backend.
ERROR_KINDS = ("raised", "timeout", "garbage", "truncated", "malformed_call", "over_limit", "tool_error")


def default_validate_answer(answer: str) -> bool:
    """An answer must contain some non-space text."""
    return bool(answer.strip())


def tool_prompt(tools: tuple[str, ...]) -> str:
    """A short tool description block for system prompts."""
    return "Tools:\n" + "\n".join(f"- {TOOL_DOCS[t]}" for t in tools if t in TOOL_DOCS)


@dataclass
class LatencyModel:
    """Simulated seconds per policy step and per tool call."""

    llm_step: float = 1.0
    tools: dict[str, float] = field(
        default_factory=lambda: {"search": 1.0, "browse": 1.0, "create_subagent": 0.0, "assign_task": 0.0}
    )
    default_tool: float = 1.0

    def tool(self, name: str) -> float:
        return float(self.tools.get(name, self.default_tool))


@dataclass
class SwarmConfig:
    """Limits of one episode. Step limits follow the paper's WideSearch setting by default (100 / 100).

    ``context_window`` / ``max_observation`` are in units of ``count`` (characters unless a tokenizer
    length is given); a single observation, including a subagent's report to the orchestrator, is cut to
    ``max_observation`` characters (a cut subagent report counts as a ``truncated`` error).
    ``critical_steps_budget=None`` means no budget. Real-time limits (seconds):
    ``subagent_timeout_s`` for a whole subagent run, ``policy_timeout_s`` for one ``act`` call of any agent
    (a timed-out main-agent step becomes an error observation). They can only interrupt policies that
    ``await``; a blocking forward pass is not pre-empted.
    """

    max_steps_main: int = 100
    max_steps_sub: int = 100
    critical_steps_budget: int | None = None
    context_window: int = 8000
    max_observation: int = 2000
    max_direct_calls: int = 1
    max_parallel: int = 100
    search_k: int = 5
    max_search_k: int = 20
    main_tools: tuple[str, ...] = SWARM_TOOLS
    sub_tools: tuple[str, ...] = SUBAGENT_TOOLS
    latency: LatencyModel = field(default_factory=LatencyModel)
    real_time_scale: float = 0.0
    subagent_timeout_s: float | None = None
    policy_timeout_s: float | None = None
    validate_answer: Callable[[str], bool] = default_validate_answer
    count: Callable[[str], int] = len
    record_contexts: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps_main", "max_steps_sub", "context_window", "max_observation", "max_parallel",
                     "search_k", "max_search_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.max_direct_calls < 0:
            raise ValueError(f"max_direct_calls must be >= 0; got {self.max_direct_calls}")
        if self.critical_steps_budget is not None and self.critical_steps_budget < 1:
            raise ValueError(f"critical_steps_budget must be >= 1 or None; got {self.critical_steps_budget}")
        for name in ("subagent_timeout_s", "policy_timeout_s"):
            t = getattr(self, name)
            if t is not None and not t > 0:
                raise ValueError(f"{name} must be > 0 or None; got {t}")
        if self.real_time_scale < 0:
            raise ValueError(f"real_time_scale must be >= 0; got {self.real_time_scale}")
        for name in ("main_tools", "sub_tools"):
            unknown = set(getattr(self, name)) - set(TOOL_SPECS)
            if unknown:
                raise ValueError(f"{name} has unknown tools {sorted(unknown)}; known: {sorted(TOOL_SPECS)}")
            if "finish" not in getattr(self, name):
                raise ValueError(f"{name} must include 'finish'")
        if set(self.sub_tools) & {"create_subagent", "assign_task"}:
            raise ValueError("sub_tools may not include create_subagent / assign_task (subagents do not nest)")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("validate_answer", "count", "latency")}
        d["latency"] = asdict(self.latency)
        d["main_tools"], d["sub_tools"] = list(self.main_tools), list(self.sub_tools)
        return d


# ------------------------------------------------------------------------------------- records


@dataclass
class StepRecord:
    """One policy step of one agent. ``t_start``/``t_end`` are simulated seconds. ``in_loss`` is True only
    for main-agent steps (subagents are frozen; their steps are environment, not policy tokens)."""

    agent_id: str
    role: str
    step: int
    stage: int
    t_start: float
    t_end: float
    text: str
    calls: list[dict[str, Any]]
    errors: list[str]
    observations: list[str]
    kind: str  # "tool" | "assign" | "finish" | "error" | "none"
    in_loss: bool
    t_act: float = 0.0  # when the policy's output arrived (t_start + llm latency); tools run after it
    info: dict[str, Any] = field(default_factory=dict)
    context: list[dict[str, Any]] | None = None


@dataclass
class AgentRecord:
    """One agent instance (the main agent, or one subagent launched by one assign_task)."""

    agent_id: str
    name: str
    role: str
    parent: str | None
    stage: int
    system_prompt: str
    task: str
    step_limit: int
    status: str = "running"
    answer: str | None = None
    steps: int = 0
    t_start: float = 0.0
    t_end: float = 0.0
    error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)  # kind (ERROR_KINDS) -> count, for this agent only

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def count_error(self, kind: str, n: int = 1) -> None:
        """Add ``n`` errors of ``kind`` (one of ``ERROR_KINDS``) to this agent's counters."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; known: {', '.join(ERROR_KINDS)}")
        if n < 0:
            raise ValueError(f"error count must be >= 0; got {n}")
        if n:  # only kinds that happened appear here; Episode.errors lists every kind
            self.errors[kind] = self.errors.get(kind, 0) + n


@dataclass
class StageRecord(Stage):
    """A :class:`Stage` (``main`` steps + per-subagent ``subs``) with its place in the episode."""

    index: int = 0
    agents: list[str] = field(default_factory=list)
    t_start: float = 0.0
    t_end: float = 0.0


@dataclass
class Episode:
    """Everything that happened. ``answer`` is None when the episode was cut off (``cutoff`` says why)."""

    episode_id: str
    task: str
    answer: str | None = None
    finished: bool = False
    cutoff: str | None = None
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    n_created: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def subagents(self) -> list[AgentRecord]:
        return [a for a in self.agents.values() if a.role == "subagent"]

    @property
    def critical_steps(self) -> int:
        return critical_steps(self.stages)

    @property
    def total_steps(self) -> int:
        return total_steps(self.stages)

    @property
    def wall_clock(self) -> float:
        """Simulated seconds from start to the end of the last stage."""
        return max((s.t_end for s in self.stages), default=0.0)

    @property
    def n_assigned(self) -> int:
        return len(self.subagents)

    @property
    def n_finished(self) -> int:
        return sum(a.finished for a in self.subagents)

    @property
    def max_parallel(self) -> int:
        return max((len(s.subs) for s in self.stages), default=0)

    @property
    def avg_parallel(self) -> float:
        """Mean number of subagents per stage that launched any (0.0 when none did)."""
        groups = [len(s.subs) for s in self.stages if s.subs]
        return sum(groups) / len(groups) if groups else 0.0

    @property
    def errors(self) -> dict[str, int]:
        """Error counters of the whole episode: every kind of ``ERROR_KINDS`` (zeros included), summed over
        the main agent and all subagents."""
        total = dict.fromkeys(ERROR_KINDS, 0)
        for a in self.agents.values():
            for k, n in a.errors.items():
                total[k] = total.get(k, 0) + n
        return total

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def failed_subagents(self) -> list[AgentRecord]:
        """Subagents that did not finish (their ``status`` says why, ``error`` and ``errors`` give details)."""
        return [a for a in self.subagents if not a.finished]

    def loss_steps(self) -> list[StepRecord]:
        """The steps whose tokens belong in the orchestrator's loss."""
        return [s for s in self.steps if s.in_loss]

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for a in self.subagents:
            statuses[a.status] = statuses.get(a.status, 0) + 1
        return {
            "episode_id": self.episode_id,
            "finished": self.finished,
            "cutoff": self.cutoff,
            "critical_steps": self.critical_steps,
            "total_steps": self.total_steps,
            "main_steps": self.agents["main"].steps if "main" in self.agents else 0,
            "wall_clock": self.wall_clock,
            "n_created": self.n_created,
            "n_assigned": self.n_assigned,
            "n_finished": self.n_finished,
            "max_parallel": self.max_parallel,
            "avg_parallel": self.avg_parallel,
            "subagent_status": statuses,
            "errors": self.errors,
            "n_errors": self.n_errors,
        }


# ------------------------------------------------------------------------------------- runtime


def _check_args(call: ToolCall) -> str | None:
    """None when ``call.args`` fit TOOL_SPECS, else an error message (extra arguments are ignored)."""
    for arg, (typ, required) in TOOL_SPECS[call.name].items():
        if arg not in call.args:
            if required:
                return f"error: {call.name} needs argument {arg!r}"
            continue
        val = call.args[arg]
        if typ is int and (isinstance(val, bool) or not isinstance(val, int)):
            return f"error: {call.name}.{arg} must be an integer"
        if typ is str and not isinstance(val, str):
            return f"error: {call.name}.{arg} must be a string"
    return None


def _being_cancelled() -> bool:
    """True when the running task has been asked to cancel (Python >= 3.11), i.e. a CancelledError seen now
    is the runtime's own cancellation (a subagent timeout, or the caller cancelling the episode) and must
    propagate. On Python 3.10 every CancelledError is treated as such."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


def _bad_calls(calls: Any, where: str) -> str | None:
    """None when ``calls`` is a list (or tuple) of well-formed ToolCall objects (a string name, a dict of
    JSON-serialisable arguments), else what is wrong with the first bad one."""
    if not isinstance(calls, (list, tuple)):
        return f"{where} must be a list of ToolCall, got {type(calls).__name__}"
    for c in calls:
        if not isinstance(c, ToolCall):
            return f"{where} must be ToolCall, got {c!r}"[:300]
        if not isinstance(c.name, str):
            return f"ToolCall.name must be a string, got {type(c.name).__name__}"
        if not isinstance(c.args, dict):
            return f"ToolCall.args of {c.name!r} must be a dict, got {type(c.args).__name__}"
        try:
            json.dumps(c.args)
        except (TypeError, ValueError) as e:
            return f"ToolCall.args of {c.name!r} are not JSON-serialisable ({e})"[:300]
    return None


def _close_turn(ctx: ContextWindow, rec: StepRecord, out: _Outcome, messages: list[Message], assigned: bool) -> None:
    """End an agent's turn: add parse errors (or a nudge when no tool was called) to the observations,
    append them all to the context window and record them on the step."""
    messages = messages + [Message("tool", err) for err in out.errors]
    if not out.calls and not out.errors:
        messages.append(Message("tool", "no tool call found; call a tool, or finish(answer) to answer"))
    for m in messages:
        ctx.add(m)
    rec.observations = [m.content for m in messages]
    rec.kind = _kind(assigned, out, messages)


def _kind(assigned: bool, out: _Outcome, messages: list[Message]) -> str:
    """Label of a step for traces and plots."""
    if assigned:
        return "assign"
    if out.errors or any(m.content.startswith("error") for m in messages):
        return "error"
    return "tool" if out.calls else "none"


@dataclass
class _Outcome:
    text: str
    calls: list[ToolCall]
    errors: list[str]
    info: dict[str, Any]
    kind: str = "malformed_call"  # the ERROR_KINDS entry that each of ``errors`` counts as


class _Run:
    """Mutable state of one episode (so one runtime can run many episodes concurrently)."""

    def __init__(self, episode: Episode) -> None:
        self.episode = episode
        self.templates: dict[str, str] = {}
        self.counter = 0

    def new_id(self, name: str) -> str:
        self.counter += 1
        return f"{name}#{self.counter}"


class SwarmRuntime:
    """Runs episodes. ``web``: any object with ``search(query, k)`` / ``browse(page_id)`` (see ``agents.web``);
    ``orchestrator``: the main agent's policy; ``subagent``: the frozen policy every subagent runs (needed
    only when the main agent may assign tasks)."""

    def __init__(
        self,
        web: Any,
        orchestrator: Policy,
        subagent: Policy | None = None,
        config: SwarmConfig | None = None,
        fmt: ToolCallFormat = DEFAULT_FORMAT,
    ) -> None:
        for meth in ("search", "browse"):
            if not callable(getattr(web, meth, None)):
                raise ValueError(f"web must have a callable {meth}(); got {type(web).__name__}")
        if not callable(getattr(orchestrator, "act", None)):
            raise ValueError("orchestrator must have an act(view) method")
        self.config = config or SwarmConfig()
        if "assign_task" in self.config.main_tools and subagent is None:
            raise ValueError("subagent policy is required when main_tools include assign_task")
        if subagent is not None and not callable(getattr(subagent, "act", None)):
            raise ValueError("subagent must have an act(view) method")
        self.web, self.orchestrator, self.subagent, self.fmt = web, orchestrator, subagent, fmt

    # -- public -------------------------------------------------------------------------------------

    async def run(self, task: str, system_prompt: str | None = None, episode_id: str | None = None) -> Episode:
        """Run one episode on ``task`` and return its :class:`Episode`."""
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task must be a non-empty string")
        cfg = self.config
        ep = Episode(episode_id or uuid.uuid4().hex[:12], task, config=cfg.to_dict())
        run = _Run(ep)
        system_prompt = system_prompt if system_prompt is not None else tool_prompt(cfg.main_tools)
        main = AgentRecord("main", "main", "main", None, 0, system_prompt, task, cfg.max_steps_main)
        ep.agents["main"] = main
        ctx = self._window(system_prompt, task)
        clock = 0.0
        while True:
            budget_left = None if cfg.critical_steps_budget is None else cfg.critical_steps_budget - ep.critical_steps
            if main.steps >= cfg.max_steps_main:
                ep.cutoff = "step_limit"
                break
            if budget_left is not None and budget_left < 1:
                ep.cutoff = "critical_steps_budget"
                break
            steps_left = cfg.max_steps_main - main.steps
            if budget_left is not None:
                steps_left = min(steps_left, budget_left)
            view = AgentView("main", "main", "main", task, ctx.messages(), main.steps, cfg.max_steps_main,
                             steps_left, budget_left, cfg.main_tools)
            stage = StageRecord(main=1, index=len(ep.stages), t_start=clock)
            rec = self._new_step(main, stage.index, clock, view, in_loss=True)
            ep.steps.append(rec)  # steps are listed in start order: a main step before its subagents' steps
            main.steps += 1
            out = await self._act(self.orchestrator, view)
            clock = rec.t_act = await self._tick(clock, cfg.latency.llm_step)
            done = await self._main_turn(run, out, stage, rec, ctx, clock, budget_left)
            stage.t_end = max([rec.t_end] + [ep.agents[a].t_end for a in stage.agents])
            clock = stage.t_end
            ep.stages.append(stage)
            if done:
                break
        main.status = "finished" if ep.finished else ("budget" if ep.cutoff == "critical_steps_budget" else
                                                        "step_limit")
        main.t_end = clock
        return ep

    def run_sync(self, task: str, system_prompt: str | None = None, episode_id: str | None = None) -> Episode:
        """Blocking ``run`` (works inside Jupyter, where an event loop is already running)."""
        return run_sync(self.run(task, system_prompt, episode_id))

    # -- one main-agent turn -------------------------------------------------------------------------

    async def _main_turn(
        self, run: _Run, out: _Outcome, stage: StageRecord, rec: StepRecord, ctx: ContextWindow, clock: float,
        budget_left: int | None,
    ) -> bool:
        """Execute the main agent's calls; fill ``stage`` / ``rec``; return True when the episode ends."""
        cfg, ep = self.config, run.episode
        main = ep.agents["main"]
        main.count_error(out.kind, len(out.errors))
        rec.text, rec.info, rec.errors = out.text, out.info, list(out.errors)
        rec.calls = [c.to_dict() for c in out.calls]
        rec.t_end = clock
        ctx.add(Message("assistant", out.text))
        obs: list[Message | None] = [None] * len(out.calls)
        finish = [i for i, c in enumerate(out.calls) if c.name == "finish"]
        if finish:
            call = out.calls[finish[0]]
            err = _check_args(call)
            if err is None:
                ep.answer, ep.finished = call.args["answer"], True
                rec.kind = "finish"
                ignored = len(out.calls) - 1
                rec.observations = [f"finished ({ignored} other call(s) in this turn ignored)"] if ignored else []
                return True
            main.count_error("malformed_call")
            obs[finish[0]] = Message("tool", err, "finish", call.args)
        direct: list[int] = []
        assigns: list[int] = []
        for i, call in enumerate(out.calls):
            if obs[i] is not None:
                continue
            if call.name not in cfg.main_tools:
                main.count_error("malformed_call")
                obs[i] = self._unknown(call, cfg.main_tools)
            elif (err := _check_args(call)) is not None:
                main.count_error("malformed_call")
                obs[i] = Message("tool", err, call.name, call.args)
            elif call.name == "create_subagent":
                name = call.args["name"].strip()
                if not name:
                    main.count_error("malformed_call")
                    obs[i] = Message("tool", "error: create_subagent needs a non-empty name", call.name, call.args)
                else:
                    new = name not in run.templates
                    run.templates[name] = call.args["system_prompt"]
                    ep.n_created += int(new)
                    word = "created" if new else "updated"
                    obs[i] = Message("tool", f"{word} subagent {name!r}", call.name, call.args)
            elif call.name in DIRECT_TOOLS:
                if len(direct) >= cfg.max_direct_calls:
                    main.count_error("over_limit")
                    obs[i] = Message("tool", f"error: at most {cfg.max_direct_calls} search/browse call(s) per step; "
                                     "this one was not run", call.name, call.args)
                else:
                    direct.append(i)
            elif call.name == "assign_task":
                agent = call.args["agent"].strip()
                if agent not in run.templates:
                    main.count_error("malformed_call")
                    known = sorted(run.templates) or "none"
                    obs[i] = Message("tool", f"error: no subagent named {agent!r} (created: {known}); call "
                                     "create_subagent first", call.name, call.args)
                elif len(assigns) >= cfg.max_parallel:
                    main.count_error("over_limit")
                    obs[i] = Message("tool", f"error: at most {cfg.max_parallel} assign_task calls per step",
                                     call.name, call.args)
                else:
                    assigns.append(i)
        # subagents of this stage may use what is left of the budget after this main step, less one step
        # kept for the orchestrator's final answer
        limit = cfg.max_steps_sub
        capped = False
        if budget_left is not None and budget_left - 2 < limit:
            limit, capped = max(budget_left - 2, 0), True
        sub_recs: list[AgentRecord] = []
        for i in assigns:
            name = out.calls[i].args["agent"].strip()
            ar = AgentRecord(run.new_id(name), name, "subagent", "main", stage.index, run.templates[name],
                             out.calls[i].args["prompt"], limit, t_start=clock, t_end=clock)
            ep.agents[ar.agent_id] = ar
            sub_recs.append(ar)
        jobs: list[Coroutine[Any, Any, Any]] = [self._direct(out.calls[i], clock, main) for i in direct]
        jobs += [self._guarded_sub(run, ar, capped) for ar in sub_recs]
        results = await asyncio.gather(*jobs)
        t_end = clock
        for i, (msg, t) in zip(direct, results[: len(direct)]):
            obs[i] = msg
            t_end = max(t_end, t)
        for i, ar in zip(assigns, sub_recs):
            obs[i] = self._sub_report(ar, out.calls[i].args)
            t_end = max(t_end, ar.t_end)
        stage.subs = [ar.steps for ar in sub_recs]
        stage.agents = [ar.agent_id for ar in sub_recs]
        rec.t_end = t_end
        _close_turn(ctx, rec, out, [m for m in obs if m is not None], bool(assigns))
        return False

    # -- subagents -----------------------------------------------------------------------------------

    async def _guarded_sub(self, run: _Run, ar: AgentRecord, capped: bool) -> None:
        """Run one subagent; nothing it does can raise out of here."""
        try:
            coro = self._run_sub(run, ar, capped)
            if self.config.subagent_timeout_s is not None:
                await asyncio.wait_for(coro, self.config.subagent_timeout_s)
            else:
                await coro
        except asyncio.TimeoutError:
            ar.status, ar.error = "timeout", f"no answer within {self.config.subagent_timeout_s} s"
            ar.count_error("timeout")
            # the step the subagent was in when it was cut off: left open by the cancellation, closed here
            open_step = next((s for s in reversed(run.episode.steps) if s.agent_id == ar.agent_id), None)
            if open_step is not None and open_step.kind == "none" and not open_step.observations:
                open_step.kind, open_step.errors = "error", [f"error: {ar.error}"]
        except asyncio.CancelledError:
            if _being_cancelled():
                raise
            ar.status, ar.error = "error", "CancelledError raised inside the subagent"
            ar.count_error("raised")
        except Exception as e:  # a bug in a policy adapter or web must not kill the episode
            ar.status, ar.error = "error", f"{type(e).__name__}: {e}"
            ar.count_error("raised")

    async def _run_sub(self, run: _Run, ar: AgentRecord, capped: bool) -> None:
        cfg, ep = self.config, run.episode
        assert self.subagent is not None
        ctx = self._window(ar.system_prompt, ar.task)
        clock = ar.t_start
        if ar.step_limit == 0:
            ar.status, ar.error = "budget", "no critical-step budget left for subagents"
            return
        while ar.steps < ar.step_limit:
            view = AgentView(ar.agent_id, ar.name, "subagent", ar.task, ctx.messages(), ar.steps, ar.step_limit,
                             ar.step_limit - ar.steps, None, cfg.sub_tools)
            rec = self._new_step(ar, ar.stage, clock, view, in_loss=False)
            ar.steps += 1
            ep.steps.append(rec)  # appended first so that a timeout still leaves the step in the trace
            out = await self._act(self.subagent, view)
            ar.count_error(out.kind, len(out.errors))
            clock = rec.t_act = await self._tick(clock, cfg.latency.llm_step)
            rec.text, rec.info, rec.errors = out.text, out.info, list(out.errors)
            rec.calls = [c.to_dict() for c in out.calls]
            rec.t_end = ar.t_end = clock
            if out.info.get("policy_error"):
                ar.status, ar.error = ("timeout" if out.kind == "timeout" else "error"), out.info["policy_error"]
                rec.kind, rec.observations = "error", [out.errors[0]]
                return
            ctx.add(Message("assistant", out.text))
            fin = next((c for c in out.calls if c.name == "finish"), None)
            if fin is not None and _check_args(fin) is None:
                rec.kind = "finish"
                ar.answer = fin.args["answer"]
                ok = self._valid(ar.answer)
                ar.status = "finished" if ok else "invalid_answer"
                if not ok:
                    ar.error = "answer failed validation"
                    ar.count_error("garbage")
                return
            messages: list[Message] = []
            direct = 0
            t_end = clock
            for call in out.calls:
                if call.name not in cfg.sub_tools:
                    ar.count_error("malformed_call")
                    messages.append(self._unknown(call, cfg.sub_tools))
                elif (err := _check_args(call)) is not None:
                    ar.count_error("malformed_call")
                    messages.append(Message("tool", err, call.name, call.args))
                elif direct >= cfg.max_direct_calls:
                    ar.count_error("over_limit")
                    messages.append(Message("tool", f"error: at most {cfg.max_direct_calls} search/browse call(s) "
                                            "per step; this one was not run", call.name, call.args))
                else:
                    direct += 1
                    msg, t = await self._direct(call, clock, ar)
                    messages.append(msg)
                    t_end = max(t_end, t)
            _close_turn(ctx, rec, out, messages, False)
            clock = rec.t_end = ar.t_end = t_end
        ar.status = "budget" if capped else "step_limit"
        ar.error = f"no finish within {ar.step_limit} steps"

    def _sub_report(self, ar: AgentRecord, args: dict[str, Any]) -> Message:
        if ar.finished:
            text = f"[{ar.agent_id}] finished in {ar.steps} steps:\n{ar.answer}"
        else:
            why = f": {ar.error}" if ar.error else ""
            text = f"[{ar.agent_id}] did not finish ({ar.status} after {ar.steps} steps){why}"
        limit = self.config.max_observation
        if len(text) > limit:  # the same cut the context window makes; counted here so that it is visible
            ar.count_error("truncated")
            text = truncate(text, limit)
        data = {"agent_id": ar.agent_id, "status": ar.status, "answer": ar.answer if ar.finished else None}
        return Message("tool", text, "assign_task", args, data)

    # -- helpers -------------------------------------------------------------------------------------

    def _window(self, system_prompt: str, task: str) -> ContextWindow:
        cfg = self.config
        return ContextWindow([Message("system", system_prompt), Message("user", task)], cfg.context_window,
                             cfg.max_observation, cfg.count)

    def _new_step(self, agent: AgentRecord, stage: int, clock: float, view: AgentView, in_loss: bool) -> StepRecord:
        ctx = [m.to_dict() for m in view.messages] if self.config.record_contexts else None
        return StepRecord(agent.agent_id, agent.role, agent.steps, stage, clock, clock, text="", calls=[], errors=[],
                          observations=[], kind="none", in_loss=in_loss, t_act=clock, info={}, context=ctx)

    def _valid(self, answer: str) -> bool:
        try:
            return bool(self.config.validate_answer(answer))
        except Exception:
            return False

    @staticmethod
    def _unknown(call: ToolCall, tools: tuple[str, ...]) -> Message:
        return Message("tool", f"error: unknown tool {call.name!r}; available: {', '.join(tools)}", call.name,
                       call.args)

    async def _tick(self, clock: float, seconds: float) -> float:
        """Advance a simulated clock; sleep for real when asked (and always yield to other agents)."""
        scale = self.config.real_time_scale
        await asyncio.sleep(seconds * scale if scale > 0 else 0)
        return clock + seconds

    async def _act(self, policy: Policy, view: AgentView) -> _Outcome:
        """Call the policy and normalise its output; exceptions and odd types become errors."""
        try:
            pending = maybe_await(policy.act(view))
            t = self.config.policy_timeout_s
            raw = await (asyncio.wait_for(pending, t) if t is not None else pending)
        except asyncio.TimeoutError:
            msg = f"error: policy gave no output within {self.config.policy_timeout_s} s"
            return _Outcome("", [], [msg], {"policy_error": msg}, "timeout")
        except asyncio.CancelledError:
            if _being_cancelled():  # the runtime itself is cancelling this agent (subagent timeout): let it
                raise
            msg = "error: policy raised CancelledError"  # the policy's own, not a cancellation of the run
            return _Outcome("", [], [msg], {"policy_error": msg}, "raised")
        except Exception as e:
            msg = f"error: policy raised {type(e).__name__}: {e}"
            return _Outcome("", [], [msg], {"policy_error": msg}, "raised")
        info: dict[str, Any] = {}
        if isinstance(raw, Action):
            if not isinstance(raw.info, dict):
                return _Outcome("", [], [f"error: Action.info must be a dict, got {type(raw.info).__name__}"], info,
                                "garbage")
            info = dict(raw.info)
            if raw.calls is not None:
                problem = _bad_calls(raw.calls, "Action.calls")
                if problem is None and not isinstance(raw.text, str):
                    problem = f"Action.text must be a string, got {type(raw.text).__name__}"
                if problem is not None:
                    text = raw.text if isinstance(raw.text, str) else ""
                    return _Outcome(text, [], [f"error: {problem}"], info, "garbage")
                # explicit calls: ``text`` is free commentary; the context shows it followed by the calls
                return _Outcome(raw.text + format_tool_calls(raw.calls, self.fmt), list(raw.calls), [], info)
            raw = raw.text
        if isinstance(raw, ToolCall):
            raw = [raw]
        if isinstance(raw, list) and all(isinstance(c, ToolCall) for c in raw):
            problem = _bad_calls(raw, "the tool calls")
            if problem is not None:
                return _Outcome("", [], [f"error: {problem}"], info, "garbage")
            return _Outcome(format_tool_calls(raw, self.fmt), list(raw), [], info)
        if not isinstance(raw, str):
            return _Outcome(repr(raw)[:200], [], [f"error: policy returned {type(raw).__name__}, expected text "
                                                 "or tool calls"], info, "garbage")
        parsed = parse_tool_calls(raw, self.fmt)
        return _Outcome(raw, parsed.calls, [f"error: {e}" for e in parsed.errors], info)

    async def _direct(self, call: ToolCall, clock: float, agent: AgentRecord) -> tuple[Message, float]:
        """Run search / browse on the web; returns (observation, simulated end time). Errors are counted on
        ``agent``."""
        cfg = self.config
        t = await self._tick(clock, cfg.latency.tool(call.name))
        try:
            if call.name == "search":
                k = min(int(call.args.get("k", cfg.search_k)), cfg.max_search_k)
                if k < 1:
                    agent.count_error("malformed_call")
                    return Message("tool", "error: search.k must be >= 1", call.name, call.args), t
                hits = await maybe_await(self.web.search(call.args["query"], k))
                hits = list(hits) if not isinstance(hits, str) else hits
                text = render_hits(hits)
                return Message("tool", truncate(text, cfg.max_observation), call.name, call.args, hits), t
            page = await maybe_await(self.web.browse(call.args["page_id"]))
            return Message("tool", render_page(page), call.name, call.args, page), t
        except (Exception, asyncio.CancelledError) as e:
            if isinstance(e, asyncio.CancelledError) and _being_cancelled():
                raise
            agent.count_error("tool_error")
            return Message("tool", f"error: {call.name} failed: {type(e).__name__}: {e}", call.name, call.args), t


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, also when an event loop is already running
    (Jupyter): then it runs on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


__all__ = [
    "DIRECT_TOOLS",
    "SINGLE_AGENT_TOOLS",
    "SUBAGENT_TOOLS",
    "SWARM_TOOLS",
    "TOOL_DOCS",
    "TOOL_SPECS",
    "ERROR_KINDS",
    "UNFINISHED",
    "AgentRecord",
    "Episode",
    "LatencyModel",
    "StageRecord",
    "StepRecord",
    "SwarmConfig",
    "SwarmRuntime",
    "default_validate_answer",
    "run_sync",
    "tool_prompt",
]
