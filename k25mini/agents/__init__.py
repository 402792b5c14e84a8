"""Agent Swarm runtime: an orchestrator with search / browse / create_subagent / assign_task / finish,
frozen subagents run concurrently (asyncio), bounded contexts, exact critical-steps accounting, simulated
latency, JSONL traces and a timeline plot. Usable outside k25mini: it needs only a ``web`` object with
``search(query, k)`` / ``browse(page_id)`` and policies with ``act(view)``.

    from k25mini.agents import SwarmRuntime, SwarmConfig, FakeWeb, LookupAgent, FanOutOrchestrator
    rt = SwarmRuntime(FakeWeb(pages), FanOutOrchestrator(), LookupAgent(), SwarmConfig(max_steps_sub=20))
    ep = rt.run_sync("Find the colour of: alpha, beta, gamma")
    ep.answer, ep.critical_steps, ep.total_steps, ep.wall_clock
"""

from k25mini.agents.context import DROPPED_MARKER, ContextWindow, Message, truncate
from k25mini.agents.critical import Stage, critical_steps, speedup, total_steps
from k25mini.agents.policy import Action, AgentView, Policy, render_messages
from k25mini.agents.runtime import (
    ERROR_KINDS,
    SINGLE_AGENT_TOOLS,
    SUBAGENT_TOOLS,
    SWARM_TOOLS,
    TOOL_DOCS,
    TOOL_SPECS,
    UNFINISHED,
    AgentRecord,
    Episode,
    LatencyModel,
    StageRecord,
    StepRecord,
    SwarmConfig,
    SwarmRuntime,
    default_validate_answer,
    run_sync,
    tool_prompt,
)
from k25mini.agents.scripted import (
    FanOutOrchestrator,
    LookupAgent,
    ScriptedPolicy,
    items_after_colon,
    merge_lines,
    render_rows,
    title_line_extract,
)
from k25mini.agents.toolcall import (
    DEFAULT_FORMAT,
    ParsedAction,
    ToolCall,
    ToolCallFormat,
    format_tool_call,
    format_tool_calls,
    parse_tool_calls,
)
from k25mini.agents.trace import episode_records, load_episodes, plot_timeline, save_episodes
from k25mini.agents.web import FakeWeb, WebBackend, hit_page_id, render_hits, render_page

__all__ = [
    "DEFAULT_FORMAT",
    "DROPPED_MARKER",
    "SINGLE_AGENT_TOOLS",
    "SUBAGENT_TOOLS",
    "SWARM_TOOLS",
    "TOOL_DOCS",
    "TOOL_SPECS",
    "ERROR_KINDS",
    "UNFINISHED",
    "Action",
    "AgentRecord",
    "AgentView",
    "ContextWindow",
    "Episode",
    "FakeWeb",
    "FanOutOrchestrator",
    "LatencyModel",
    "LookupAgent",
    "Message",
    "ParsedAction",
    "Policy",
    "ScriptedPolicy",
    "Stage",
    "StageRecord",
    "StepRecord",
    "SwarmConfig",
    "SwarmRuntime",
    "ToolCall",
    "ToolCallFormat",
    "WebBackend",
    "critical_steps",
    "default_validate_answer",
    "episode_records",
    "format_tool_call",
    "format_tool_calls",
    "hit_page_id",
    "items_after_colon",
    "load_episodes",
    "merge_lines",
    "parse_tool_calls",
    "plot_timeline",
    "render_hits",
    "render_messages",
    "render_page",
    "render_rows",
    "run_sync",
    "save_episodes",
    "speedup",
    "title_line_extract",
    "tool_prompt",
    "total_steps",
    "truncate",
]
