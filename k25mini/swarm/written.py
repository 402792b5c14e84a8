"""The model-written swarm: an LM reads its context window as text and writes whole tool calls.

Unlike :mod:`k25mini.swarm.codec` (one-letter codes that environment code expands into calls), here every
argument is sampled text: the orchestrator writes ``create_subagent`` / ``assign_task`` calls whose prompts
name the items and columns it chose; subagents write their own ``browse`` calls and read the facts off the
page text; the final table is written by the model. Environment code (:class:`~k25mini.agents.SwarmRuntime`)
only parses the text, executes the tools and scores the answer.

* :func:`render_context` / :func:`prompt_ids`: the agent's bounded context window in a compact chat layout
  (Kimi's special tokens, no role names), ending where the assistant writes.
* :class:`WrittenPolicy`: a k25mini VLM as an agent; concurrent agents are sampled in one batch with
  :func:`k25mini.rl.rollout.sample` (mixed prompt lengths, the MLA cache), stopping at ``<|im_end|>``. Each
  step keeps ``prompt_ids``, ``completion_ids`` and the sampler's ``logp`` (π_old of the K2.5 loss).
* :class:`WrittenTeacher`: a scripted policy that writes the same text, used only to make warm-start (SFT)
  traces. Its fan-out width is drawn per episode (serial, or 1 to 8 subagents), so the warm start does not fix
  the width; RL has to find it.
* :func:`sft_sequences`: a whole agent's steps as one training sequence where each prompt extends the previous
  one (loss on the agent's own tokens only), so a trace costs one forward instead of one per step.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from k25mini.agents import (
    SINGLE_AGENT_TOOLS,
    SWARM_TOOLS,
    Action,
    AgentView,
    Episode,
    Message,
    SwarmConfig,
    SwarmRuntime,
    run_sync,
)
from k25mini.agents.context import DROPPED_MARKER
from k25mini.agents.toolcall import DEFAULT_FORMAT
from k25mini.data.bpe import BPETokenizer
from k25mini.data.tokenizer import Tokenizer
from k25mini.optim import build_optimizer
from k25mini.rl import PARLConfig, PARLReward, group_advantages
from k25mini.rl.rollout import sample
from k25mini.rl.step import CompletionBatch, policy_update
from k25mini.swarm.env import aggregate, episode_metrics
from k25mini.swarm.policy import LMPolicy
from k25mini.swarm.tasks import make_swarm_tasks
from k25mini.train import Callback, TrainConfig, Trainer
from k25mini.train.rng import capture_rng_state, restore_rng_state
from k25mini.world import Web, World, parse_markdown_table, table_to_markdown

__all__ = [
    "MAIN_SWARM_PROMPT", "MAIN_SINGLE_PROMPT", "render_context", "prompt_ids", "call_text", "WrittenPolicy",
    "WrittenTeacher", "sft_sequences", "TextOnlyVLM", "CompactWeb", "ATTRS", "written_batches", "pad_written",
    "sft_written", "WrittenEnv", "run_written", "rl_batch", "WrittenRLConfig", "rl_written", "copy_example",
    "copy_accuracy", "copy_warmup", "COPY_KINDS", "teacher_episodes", "train_trace_tokenizer",
]

_TOK = Tokenizer()
END = "<|im_end|>"
MAIN_SWARM_PROMPT = "swarm"
MAIN_SINGLE_PROMPT = "solo"
SUB_NAME = "w"
SUB_PROMPT = "look up rows"
TODO = "todo: "
_ROLE = {"system": "<|im_system|>", "user": "<|im_user|>", "assistant": "<|im_assistant|>"}


def render_context(messages: Sequence[Message]) -> str:
    """The context as the LM reads it: ``<|bos|>``, then each message in Kimi's special tokens, then
    ``<|im_assistant|>`` for the model to continue. Tool results are wrapped in the result markers."""
    parts = ["<|bos|>"]
    for m in messages:
        if m.role == "tool":
            parts.append(f"<|tool_result_begin|>{m.content}<|tool_result_end|>")
        else:
            parts.append(f"{_ROLE.get(m.role, '<|im_system|>')}{m.content}{END}")
    parts.append("<|im_assistant|>")
    return "".join(parts)


def prompt_ids(view: AgentView, tokenizer: Tokenizer | None = None) -> list[int]:
    """The ids of :func:`render_context` (``tokenizer``: the byte tokenizer when None, or a
    :class:`~k25mini.data.bpe.BPETokenizer`)."""
    return _check_tokenizer(tokenizer).encode(render_context(view.messages))


def _check_tokenizer(tokenizer: Tokenizer | None, model: torch.nn.Module | None = None) -> Tokenizer:
    """``tokenizer`` or the byte tokenizer; refuses a non-tokenizer and one whose ids a model's vocabulary
    cannot hold (``model``: a :class:`TextOnlyVLM` or VLM)."""
    tok = _TOK if tokenizer is None else tokenizer
    if not isinstance(tok, Tokenizer):
        raise ValueError(f"tokenizer must be a k25mini Tokenizer (or None for bytes), got {type(tokenizer).__name__}")
    lm = getattr(model, "language_model", None)
    vocab = getattr(getattr(lm, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and vocab < tok.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary holds {vocab}; give the "
                         f"model vocab_size >= {tok.vocab_size}")
    return tok


def call_text(name: str, args: dict[str, Any]) -> str:
    """One call as the model writes it (compact JSON, key order as given)."""
    f = DEFAULT_FORMAT
    return f"{f.call_begin}{name}{f.arg_begin}{json.dumps(args, separators=(',', ':'))}{f.call_end}"


class TextOnlyVLM(torch.nn.Module):
    """A K2 causal LM dressed as the VLM interface :func:`k25mini.rl.rollout.sample` expects
    (``language_model`` and ``embed(ids, media)``), for agents that never see media."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.language_model = lm

    def embed(self, ids: torch.Tensor, media: Any = None) -> torch.Tensor:
        if media:
            raise ValueError("TextOnlyVLM takes no media")
        return self.language_model.model.embed_tokens(ids)


class WrittenPolicy(LMPolicy):
    """A VLM (or :class:`TextOnlyVLM`) as an agent that writes its tool calls as text.

    ``act`` queues the agent's prompt; once every runnable agent is waiting, one batched :func:`sample` call
    answers them all (``temperature=0``: greedy), through :class:`~k25mini.swarm.policy.LMPolicy`'s queue. A
    prompt that leaves fewer than ``max_new_tokens`` positions raises ``ValueError`` in that agent only (the
    runtime counts it as a policy error). Nothing is memoised. ``tokenizer`` reads and writes the text (the byte
    tokenizer when None); it must be the one the model was trained with."""

    def __init__(self, model: torch.nn.Module, *, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, idle_ticks: int = 8, batch_size: int = 64, tokenizer: Tokenizer | None = None
                 ) -> None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        super().__init__(model, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                         idle_ticks=idle_ticks)
        self.batch_size = batch_size
        self.tok = _check_tokenizer(tokenizer, model)
        self.max_pos = model.language_model.config.max_position_embeddings
        self.n_batches = 0

    def generate(self, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        groups = sample(self.model, prompts, k=1, max_new_tokens=self.max_new_tokens,
                        temperature=self.temperature, stops=[self.tok.im_end_id], generator=self.generator,
                        batch_size=self.batch_size)
        self.n_generated += len(prompts)
        self.n_batches += 1
        return [(g[0].tokens, g[0].logprobs) for g in groups]

    async def act(self, view: AgentView) -> Action:
        ids = prompt_ids(view, self.tok)
        if len(ids) + self.max_new_tokens > self.max_pos:
            raise ValueError(f"context of {len(ids)} tokens leaves less than max_new_tokens={self.max_new_tokens} "
                             f"of {self.max_pos} positions")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((ids, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.ensure_future(self._flush_when_idle())
        comp, logp = await fut
        body = comp[:-1] if comp and comp[-1] == self.tok.im_end_id else comp
        return Action(text=self.tok.decode(body), info={"prompt_ids": ids, "completion_ids": list(comp),
                                                    "logp": list(logp)})


# ------------------------------------------------------------------------------------- the web

ATTRS = ("colour", "shape", "region", "weight", "speed", "friend")


class CompactWeb(Web):
    """The world's web with short pages, so that byte-level contexts stay within a CPU budget.

    An entity page is one line of ``key value`` pairs (``name Buti; colour green; shape star; region east;
    weight 38; speed 13; friend Movi``); a region page lists its creatures (``east: Buti, Movi.``). Page ids,
    search and latencies are the world web's."""

    def __init__(self, world: World, **kw: Any) -> None:
        super().__init__(world, **kw)
        pages: dict[str, str] = {}
        regions: dict[str, list[str]] = {}
        for e in world.entities:
            pages[f"entity/{e.name.lower()}"] = "; ".join([f"name {e.name}"] + [f"{a} {e.value(a)}" for a in ATTRS])
            regions.setdefault(e.region, []).append(e.name)
        for pid in self.pages:
            if pid.startswith("region/"):
                r = pid.split("/", 1)[1]
                pages[pid] = f"{r}: {', '.join(regions.get(r, [])) or 'none'}."
        self.pages = pages
        self._reindex()

    def _reindex(self) -> None:
        word = re.compile(r"[a-z0-9]+")
        self._tokens = {pid: Counter(word.findall(t.lower())) for pid, t in self.pages.items()}
        self._title = {pid: set(word.findall(pid.split("/", 1)[1])) for pid in self.pages}
        df = Counter(w for toks in self._tokens.values() for w in toks)
        self._idf = {w: math.log(1 + len(self.pages) / c) for w, c in df.items()}


# ------------------------------------------------------------------------------------- the teacher


def _page_row(text: str, columns: list[str]) -> dict[str, str] | None:
    """The columns of one compact entity page (a scripted reader; only the teacher uses it)."""
    facts = dict(kv.strip().partition(" ")[::2] for kv in text.split(";"))
    if not all(c in facts for c in columns):
        return None
    return {c: facts[c] for c in columns}


_DEEP_CUES = (("where does", "region"), ("how heavy is", "weight"), ("how fast is", "speed"),
              ("what colour is", "colour"), ("what shape is", "shape"))


def _columns(task: str) -> list[str]:
    _, _, tail = task.partition("Columns: ")
    return [c.strip() for c in tail.rstrip(".").split(",") if c.strip()]


def _regions(task: str) -> list[str]:
    words = task.replace(".", " ").split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "the" and words[i - 1] in ("in", "or")]


def _items(task: str) -> list[str]:
    head = task.split(".", 1)[0]
    return [s.strip() for s in head.partition(": ")[2].split(",") if s.strip()]


@dataclass
class _Seen:
    regions_read: list[str]
    names: list[str]
    rows: dict[str, dict[str, str]]
    browsed: list[str]
    created: bool


def _seen(view: AgentView, columns: list[str]) -> _Seen:
    s = _Seen([], [], {}, [], False)
    for m in view.messages:
        if m.role != "tool" or m.content.startswith("error"):
            continue
        if m.tool == "browse":
            head, sep, rest = m.content.partition(": ")
            if sep and not head.startswith("name ") and m.content.endswith("."):
                s.regions_read.append(head.strip())
                names = rest.rstrip(".").split(", ")
                s.names += [n for n in names if n and n != "none" and n not in s.names]
            else:
                row = _page_row(m.content, columns)
                if row is not None:
                    s.rows.setdefault(row["name"], row)
                    s.browsed.append(row["name"])
        elif m.tool == "create_subagent":
            s.created = True
        elif m.tool == "assign_task":
            for r in parse_markdown_table(m.content.partition("\n")[2]):
                if r.get("name"):
                    s.rows.setdefault(r["name"], {c: r.get(c, "") for c in columns})
    return s


def _dropped(view: AgentView) -> bool:
    """Has the context window dropped older messages (its marker message is present)?"""
    head = DROPPED_MARKER.split("{", 1)[0]
    return any(m.role == "system" and m.content.startswith(head) for m in view.messages)


def _table(rows: list[dict[str, str]], columns: list[str]) -> str:
    return table_to_markdown(rows, columns) if rows else "(nothing found)"


class WrittenTeacher:
    """Scripted writer of warm-start traces in :class:`WrittenPolicy`'s text format (wide and deep tasks).

    Main agent: browse the task's region pages (one per step), then either browse every item itself
    (``width=0``, serial) or create one subagent template and assign the items in ``width`` near-equal
    contiguous chunks, all in one step; finally write the table from what its context holds. The width is
    drawn per episode from ``widths`` (seeded by the task text). Subagent: browse each listed item's page, then
    finish with a table of the rows it read. ``scratchpad=True``: before each browse of a serial scan it writes
    a note of the items still to do (``todo: B, C``), so the next item is copied from its own last message.
    It only reads its context window: rows whose pages were dropped from the window are lost, as they would be
    for a model. Deep questions: see :meth:`_deep`. ``tokenizer`` gives the ids its traces are stored with (the
    byte tokenizer when None)."""

    def __init__(self, widths: Sequence[int] = (0, 1, 2, 3, 4, 6, 8), seed: int = 0,
                 scratchpad: bool = False, tokenizer: Tokenizer | None = None) -> None:
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of ints >= 0; got {widths!r}")
        self.widths, self.seed, self.scratchpad = tuple(widths), int(seed), bool(scratchpad)
        self.tok = _check_tokenizer(tokenizer)

    def width_for(self, task: str) -> int:
        rng = random.Random(zlib.crc32(f"{self.seed}:{task}".encode()))
        return self.widths[rng.randrange(len(self.widths))]

    def act(self, view: AgentView) -> Action:
        if not view.task.startswith(("Make a table", "Look up:")):
            text = self._deep(view)
        else:
            text = self._sub(view) if view.role == "subagent" else self._main(view)
        return Action(text=text, info={"prompt_ids": prompt_ids(view, self.tok),
                                       "completion_ids": self.tok.encode(text + END)})

    def _scan(self, view: AgentView, names: list[str], s: _Seen) -> str | None:
        """The next browse of a serial scan over ``names``, or None when the scan is over. With the scratchpad
        every browse is preceded by a note of what is left (``todo: B, C``), and the next item is the first
        one of the latest note: copying from the agent's own last message instead of finding its place in the
        list. Without it, a scan stops once the window has dropped its oldest messages."""
        notes = [m.content.split(DEFAULT_FORMAT.call_begin, 1)[0] for m in view.messages if m.role == "assistant"]
        notes = [n for n in notes if n.startswith(TODO)]
        if self.scratchpad and notes:
            rest = notes[-1][len(TODO):].strip()
            todo = [] if rest == "-" else [x.strip() for x in rest.split(",") if x.strip()]
        else:
            todo = [] if _dropped(view) else [n for n in names if n not in s.browsed]
        if not todo or view.steps_left <= 1:
            return None
        note = f"{TODO}{', '.join(todo[1:]) or '-'}" if self.scratchpad else ""
        return note + call_text("browse", {"page_id": f"entity/{todo[0].lower()}"})

    def _sub(self, view: AgentView) -> str:
        columns, items = _columns(view.task), _items(view.task)
        s = _seen(view, columns)
        nxt = self._scan(view, items, s)
        if nxt is not None:
            return nxt
        rows = [s.rows[n] for n in items if n in s.rows]
        return call_text("finish", {"answer": _table(rows, columns)})

    def _deep(self, view: AgentView) -> str:
        """A multi-hop question: find the start (by name, or by a search for its look), follow ``friend`` one
        page per hop, answer the asked attribute. In a swarm, a width > 0 hands the whole question to one
        subagent and answers with its report."""
        q = view.task.rstrip("?")
        low = q.lower()
        hops = low.count("the friend of") + 1
        attr = next((a for cue, a in _DEEP_CUES if low.startswith(cue)), "region")
        start = q.rsplit("the friend of ", 1)[-1].strip()
        for cue, _ in _DEEP_CUES:  # a one-hop question names its start right after the cue
            if hops == 1 and low.startswith(cue):
                start = q[len(cue):].strip()
        start = start.removesuffix(" live").strip()
        pages: list[dict[str, str]] = []
        hit = None
        report = None
        for m in view.messages:
            if m.role != "tool" or m.content.startswith("error"):
                continue
            if m.tool == "browse" and m.content.startswith("name "):
                pages.append(dict(kv.strip().partition(" ")[::2] for kv in m.content.split(";")))
            elif m.tool == "search":
                hit = m.content.split("\n", 1)[0]
            elif m.tool == "assign_task" and " finished in " in m.content.split("\n", 1)[0]:
                report = m.content.partition("\n")[2].strip()
        if report is not None:
            return call_text("finish", {"answer": report})
        if view.role == "main" and "assign_task" in view.tools and self.width_for(view.task) > 0 and not pages \
                and hit is None and view.steps_left > 2:
            return call_text("create_subagent", {"name": SUB_NAME, "system_prompt": SUB_PROMPT}) + \
                call_text("assign_task", {"agent": SUB_NAME, "prompt": view.task})
        if len(pages) >= hops or view.steps_left <= 1:
            return call_text("finish", {"answer": pages[-1].get(attr, "unknown") if pages else "unknown"})
        if pages:
            return call_text("browse", {"page_id": f"entity/{pages[-1].get('friend', '').lower()}"})
        if start.startswith("the "):
            if hit is None:
                return call_text("search", {"query": start[4:]})
            return call_text("browse", {"page_id": hit})
        return call_text("browse", {"page_id": f"entity/{start.lower()}"})

    def _main(self, view: AgentView) -> str:
        columns, regions = _columns(view.task), _regions(view.task)
        s = _seen(view, columns)
        swarm = "assign_task" in view.tools
        width = self.width_for(view.task) if swarm else 0
        todo_regions = [r for r in regions if r not in s.regions_read]
        if todo_regions and view.steps_left > 1 and not _dropped(view):
            return call_text("browse", {"page_id": f"region/{todo_regions[0]}"})
        if width > 0 and not s.created and s.names and view.steps_left > 2:
            k = min(width, len(s.names))
            q, r = divmod(len(s.names), k)
            sizes = [q + (1 if i < r else 0) for i in range(k)]
            calls = [call_text("create_subagent", {"name": SUB_NAME, "system_prompt": SUB_PROMPT})]
            at = 0
            for z in sizes:
                chunk = s.names[at : at + z]
                at += z
                prompt = f"Look up: {', '.join(chunk)}. Columns: {', '.join(columns)}."
                calls.append(call_text("assign_task", {"agent": SUB_NAME, "prompt": prompt}))
            return "".join(calls)
        if width == 0:  # serial: pages dropped from the window are lost; the answer holds what is left
            nxt = self._scan(view, s.names, s)
            if nxt is not None:
                return nxt
        rows = [s.rows[n] for n in s.names if n in s.rows] + [r for n, r in s.rows.items() if n not in s.names]
        return call_text("finish", {"answer": _table(rows, columns)})


# ------------------------------------------------------------------------------------- SFT sequences


def sft_sequences(episodes: Sequence[Episode], roles: Sequence[str] = ("main", "subagent"),
                  max_len: int | None = None) -> list[tuple[list[int], list[bool]]]:
    """One (ids, trained) pair per agent run, merging consecutive steps while each step's prompt extends the
    previous prompt + completion (a dropped message breaks the chain and starts a new sequence). ``trained``
    marks the agent's own completion tokens. Sequences longer than ``max_len`` are dropped (counted by the
    caller via the difference in length)."""
    out: list[tuple[list[int], list[bool]]] = []
    for ep in episodes:
        by_agent: dict[str, list[Any]] = {}
        for s in ep.steps:
            if s.role in roles and "prompt_ids" in s.info and "completion_ids" in s.info:
                by_agent.setdefault(s.agent_id, []).append(s)
        for steps in by_agent.values():
            ids: list[int] = []
            mask: list[bool] = []
            for s in steps:
                p, c = list(s.info["prompt_ids"]), list(s.info["completion_ids"])
                if ids and p[: len(ids)] == ids:
                    extra = p[len(ids):]
                else:
                    if ids:
                        out.append((ids, mask))
                    ids, mask, extra = [], [], p
                ids += extra + c
                mask += [False] * len(extra) + [True] * len(c)
            if ids:
                out.append((ids, mask))
    if max_len is not None:
        out = [(i, m) for i, m in out if len(i) <= max_len]
    return out


def written_batches(seqs: Sequence[tuple[list[int], list[bool]]], steps: int, tokens_per_batch: int = 6000,
                    seed: int = 0) -> list[list[int]]:
    """Indices of ``seqs`` for each of ``steps`` batches: a random start in length order, then neighbours while
    ``rows × longest`` stays within ``tokens_per_batch`` (at least one row), so batches waste little padding."""
    if not seqs:
        raise ValueError("seqs must be non-empty")
    for name, v in (("steps", steps), ("tokens_per_batch", tokens_per_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
            raise ValueError(f"{name} must be an int >= {0 if name == 'steps' else 1}; got {v!r}")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        j = rng.randrange(len(order))
        batch = [order[j]]
        while j + 1 < len(order) and (len(batch) + 1) * len(seqs[order[j + 1]][0]) <= tokens_per_batch:
            j += 1
            batch.append(order[j])
        out.append(batch)
    return out


def pad_written(seqs: Sequence[tuple[list[int], list[bool]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, S] right-padded with ``<|pad|>`` and labels [B, S] (-100 outside the trained tokens)."""
    S = max(len(i) for i, _ in seqs)
    ids = torch.full((len(seqs), S), _TOK.pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), S), -100, dtype=torch.long)
    for r, (i, m) in enumerate(seqs):
        if len(i) != len(m):
            raise ValueError(f"sequence {r}: {len(i)} ids but {len(m)} mask entries")
        t = torch.tensor(i, dtype=torch.long)
        ids[r, : len(i)] = t
        labels[r, : len(i)] = t.masked_fill(~torch.tensor(m, dtype=torch.bool), -100)
    return ids, labels


def sft_written(lm: torch.nn.Module, seqs: Sequence[tuple[list[int], list[bool]]], steps: int, *,
                tokens_per_batch: int = 6000, lr: float = 3e-3, warmup: int = 30, seed: int = 0,
                log: Any = None) -> list[float]:
    """Warm start: next-token loss on the agents' own tokens of :func:`sft_sequences`, trained by the shared
    :class:`~k25mini.train.Trainer` (AdamW through ``build_optimizer``, so the MoE router-bias update runs;
    linear warm-up then cosine decay; grad-norm clip 1.0; fp32). Returns the loss per step. The global RNG
    states are left as they were."""
    picks = written_batches(seqs, steps, tokens_per_batch, seed)
    if steps == 0:
        return []

    class _Log(Callback):
        def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
            log(record["step"] - 1, record["loss"])

    def batch_at(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_written([seqs[j] for j in picks[index]])

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return m.loss(*batch)

    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=0.0, decay="cosine", warmup_steps=min(warmup, steps),
                      grad_clip=1.0, optimizer="adamw", log_every=1, eval_at_end=False, save_final=False,
                      bf16=False, progress=False, seed=seed)
    state = capture_rng_state()
    try:
        trainer = Trainer(lm, loss_fn, batch_at, cfg, callbacks=[_Log()] if log is not None else ())
        history = trainer.fit()
    finally:
        restore_rng_state(state)
    return [r["loss"] for r in history if r["split"] == "train"]


# ------------------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class WrittenEnv:
    """Sizes of the written swarm's world and limits (in byte tokens). ``window`` + ``max_new_tokens`` must fit
    the model's positions; a wide task has ``min_rows``..``max_rows`` rows, more than one ``window`` holds
    comfortably for a serial agent at the upper end."""

    n_entities: int = 40
    min_rows: int = 4
    max_rows: int = 10
    window: int = 1000
    max_observation: int = 400
    max_new_tokens: int = 256
    max_positions: int = 1280
    max_steps_main: int = 24
    max_steps_sub: int = 12
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.window + self.max_new_tokens + 2 > self.max_positions:
            raise ValueError(f"window ({self.window}) + max_new_tokens ({self.max_new_tokens}) + 2 (<|bos|> and the "
                             f"final <|im_assistant|>) must fit max_positions ({self.max_positions})")
        if not 1 <= self.min_rows <= self.max_rows:
            raise ValueError(f"need 1 <= min_rows <= max_rows; got {self.min_rows}, {self.max_rows}")


#: tokens :func:`render_context` adds around each message (a role or tool-result marker and its end marker); the
#: window counts them, so a context of ``window`` tokens renders to at most ``window + 2`` (``<|bos|>`` and the
#: final ``<|im_assistant|>``)
_FRAME = 2


def run_written(world: World, tasks: Sequence[Any], main: Any, sub: Any, env: WrittenEnv, *, swarm: bool,
                budget: int | None | str = "env", window: int | None = None,
                prefix: str = "ep", tokenizer: Tokenizer | None = None) -> tuple[list[Episode], CompactWeb]:
    """Run ``tasks`` concurrently (LM policies sample them in batches); returns the episodes and the web whose
    ``calls`` log is what the environment executed. The context window is counted in ``tokenizer``'s tokens
    (the byte tokenizer when None), markers around each message included, so a prompt is at most ``window + 2``
    tokens; policies should read with the same tokenizer."""
    tok = _check_tokenizer(tokenizer)
    b = env.budget if budget == "env" else budget
    cfg = SwarmConfig(max_steps_main=env.max_steps_main, max_steps_sub=env.max_steps_sub, critical_steps_budget=b,
                      context_window=env.window if window is None else window,
                      max_observation=env.max_observation, main_tools=SWARM_TOOLS if swarm else SINGLE_AGENT_TOOLS,
                      count=lambda s: len(tok.encode(s)) + _FRAME)
    web = CompactWeb(world)
    rt = SwarmRuntime(web, main, sub if swarm else None, cfg)
    system = MAIN_SWARM_PROMPT if swarm else MAIN_SINGLE_PROMPT

    async def _all() -> list[Episode]:
        return list(await asyncio.gather(*[rt.run(t.text, system, episode_id=f"{prefix}-{i}")
                                           for i, t in enumerate(tasks)]))

    return run_sync(_all()), web


def teacher_episodes(env: WrittenEnv, world_seeds: Sequence[int], *, tasks_per_world: int = 1,
                     deep_per_world: int = 0, scratchpad: bool = False, tokenizer: Tokenizer | None = None
                     ) -> Iterator[list[Episode]]:
    """The teacher's episodes on each world of ``world_seeds`` (seeded by the world), in swarm mode and then as a
    single agent: one list per (world, mode), ids in ``tokenizer``'s tokens (bytes when None)."""
    if not world_seeds:
        raise ValueError("world_seeds must not be empty")
    for ws in world_seeds:
        w = World(seed=int(ws), n_entities=env.n_entities)
        tasks = make_swarm_tasks(w, tasks_per_world, deep_per_world, min_rows=env.min_rows, max_rows=env.max_rows)
        teacher = WrittenTeacher(seed=int(ws), scratchpad=scratchpad, tokenizer=tokenizer)
        for swarm in (True, False):
            yield run_written(w, tasks, teacher, teacher, env, swarm=swarm, tokenizer=tokenizer)[0]


def train_trace_tokenizer(env: WrittenEnv, world_seeds: Sequence[int], vocab_size: int, *,
                          tasks_per_world: int = 1, deep_per_world: int = 0, scratchpad: bool = False
                          ) -> BPETokenizer:
    """A BPE tokenizer learned from the teacher's traces (swarm and single, byte windows of ``env``'s size) on
    ``world_seeds``, which should be training worlds only: the merges then hold the protocol's JSON pieces,
    attribute words and name syllables, never anything of a development or evaluation world."""
    texts = [_TOK.decode(ids) for eps in teacher_episodes(env, world_seeds, tasks_per_world=tasks_per_world,
                                                          deep_per_world=deep_per_world, scratchpad=scratchpad)
             for ids, _ in sft_sequences(eps)]
    return BPETokenizer.train(texts, vocab_size)


# ------------------------------------------------------------------------------------- PARL on written episodes


def rl_batch(episodes: Sequence[Episode], advantages: Sequence[float]) -> CompletionBatch | None:
    """The K2.5-loss batch of main-agent tokens: each episode's main-agent steps merged into chains as in
    :func:`sft_sequences` (prompt tokens context, completion tokens trained with the sampler's log-probs as
    π_old and the episode's advantage). Subagent steps never enter (they are ``in_loss=False``). None when no
    step carries sampled tokens."""
    if len(advantages) != len(episodes):
        raise ValueError(f"need one advantage per episode; got {len(advantages)} for {len(episodes)}")
    rows: list[tuple[list[int], list[bool], list[float], float]] = []
    for ep, a in zip(episodes, advantages):
        ids: list[int] = []
        mask: list[bool] = []
        old: list[float] = []
        for s in ep.loss_steps():
            if s.role != "main":
                raise ValueError(f"a {s.role} step is marked in_loss")
            if not {"prompt_ids", "completion_ids", "logp"} <= set(s.info):
                continue
            p, c, lp = list(s.info["prompt_ids"]), list(s.info["completion_ids"]), list(s.info["logp"])
            if len(lp) != len(c):
                raise ValueError(f"step {s.agent_id}/{s.step}: {len(lp)} log-probs for {len(c)} tokens")
            if ids and p[: len(ids)] == ids:
                extra = p[len(ids):]
            else:
                if ids:
                    rows.append((ids, mask, old, float(a)))
                ids, mask, old, extra = [], [], [], p
            ids += extra + c
            mask += [False] * len(extra) + [True] * len(c)
            old += [0.0] * len(extra) + lp
        if ids:
            rows.append((ids, mask, old, float(a)))
    if not rows:
        return None
    S = max(len(r[0]) for r in rows)
    B = len(rows)
    t_ids = torch.full((B, S), _TOK.pad_id, dtype=torch.long)
    t_mask = torch.zeros(B, S, dtype=torch.bool)
    t_old = torch.zeros(B, S)
    for i, (ids, mask, old, _) in enumerate(rows):
        t_ids[i, : len(ids)] = torch.tensor(ids)
        t_mask[i, : len(ids)] = torch.tensor(mask)
        t_old[i, : len(ids)] = torch.tensor(old)
    return CompletionBatch(t_ids, t_mask, t_old, torch.tensor([r[3] for r in rows], dtype=torch.float32))


@dataclass
class WrittenRLConfig:
    """PARL RL of the orchestrator. α, β, τ: the K2.5 loss's band and log-ratio penalty (chapter 07's default:
    mask + τ on kept tokens)."""

    iterations: int = 20
    tasks_per_iter: int = 4
    group_size: int = 6
    lr: float = 3e-4
    updates_per_iter: int = 2
    temperature: float = 1.0
    alpha: float = 0.5
    beta: float = 2.0
    tau: float = 0.01
    parl: PARLConfig = field(default_factory=PARLConfig)


def rl_written(lm: torch.nn.Module, task_sets: Sequence[tuple[World, Sequence[Any]]], subagent: Any,
               env: WrittenEnv, cfg: WrittenRLConfig, *, seed: int = 0, log: Any = None,
               tokenizer: Tokenizer | None = None) -> list[dict[str, float]]:
    """PARL RL of ``lm`` as the orchestrator on written episodes: each iteration draws ``tasks_per_iter``
    (world, task) pairs, samples ``group_size`` episodes of each with the current model (π_old), runs
    ``subagent`` (a frozen policy) for every assignment, rewards each episode with PARL (item-F1 + annealed
    λ1·r_parallel + λ2·r_finish), takes group-mean advantages and applies the registry's K2.5 loss to the
    orchestrator's own tokens (``policy_update``: grad clip 1.0, the MoE bias hook). An iteration in which every
    advantage is 0 (no group's rewards differ) takes no optimiser step (``updated`` 0 in its row). Returns one
    metrics dict per iteration; errors of every kind are summed into ``errors``. ``tokenizer``: the model's (byte
    when None)."""
    pairs = [(w, t) for w, ts in task_sets for t in ts]
    if not pairs:
        raise ValueError("task_sets hold no task")
    rng = random.Random(seed)
    opt = build_optimizer(lm, kind="adamw", lr=cfg.lr, weight_decay=0.0)
    reward = PARLReward(cfg.parl, cfg.iterations)
    vlm = TextOnlyVLM(lm)
    history = []
    for it in range(cfg.iterations):
        chosen = [pairs[rng.randrange(len(pairs))] for _ in range(cfg.tasks_per_iter)]
        pol = WrittenPolicy(vlm, temperature=cfg.temperature, max_new_tokens=env.max_new_tokens,
                            seed=seed * 100003 + it, tokenizer=tokenizer)
        eps: list[Episode] = []
        mets: list[dict[str, float]] = []
        for g, (w, t) in enumerate(chosen):
            got, _ = run_written(w, [t] * cfg.group_size, pol, subagent, env, swarm=True, prefix=f"it{it}g{g}",
                                 tokenizer=tokenizer)
            eps += got
            mets += [episode_metrics(e, t) for e in got]
        rs, parts = [], []
        for e, m in zip(eps, mets):
            r, p = reward(m["item_f1"], e, it)
            rs.append(r)
            parts.append(p)
        rewards = torch.tensor(rs, dtype=torch.float32)
        # a group whose rewards are all equal carries no signal: its advantages are exactly 0 (the float mean
        # can leave ~3e-8), and with no such group at all there is no step (Adam would turn a gradient of
        # rounding noise into a step of about lr on every weight)
        spread = [max(rs[i:i + cfg.group_size]) > min(rs[i:i + cfg.group_size])
                  for i in range(0, len(rs), cfg.group_size)]
        adv = group_advantages(rewards, cfg.group_size) * torch.tensor(spread).repeat_interleave(cfg.group_size)
        batch = rl_batch(eps, adv.tolist())
        signal = batch is not None and any(spread)
        stats = policy_update(lm, opt, batch, loss="kimi_k25", updates=cfg.updates_per_iter, grad_clip=1.0,
                              alpha=cfg.alpha, beta=cfg.beta, tau=cfg.tau) if signal else {}
        row = aggregate(mets)
        row.update(iteration=float(it), reward=float(rewards.mean()), lambda1=parts[0]["lambda1"],
                   lambda2=parts[0]["lambda2"], r_parallel=sum(p["r_parallel"] for p in parts) / len(parts),
                   r_finish=sum(p["r_finish"] for p in parts) / len(parts),
                   masked_frac=float(stats.get("masked_frac", 0.0)), updated=float(signal))
        history.append(row)
        if log is not None:
            log(row)
    return history


# ------------------------------------------------------------------------------------- copy warm-up

_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_PLACES = ("hills", "north", "coast", "south", "east", "west")


def _fresh_name(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2)).capitalize()


COPY_KINDS = ("list", "next", "page_id")


def copy_example(rng: random.Random, tokenizer: Tokenizer | None = None) -> tuple[list[int], list[int], str]:
    """One synthetic (prompt, target) pair that can only be solved by copying from the context: a list of 3–12
    random names (never world entities), then one of: repeat the list; the name after a given one; the page id
    of the k-th name (lower-cased). Returns (prompt ids, target ids ending with ``<|im_end|>``, the kind).
    Used to grow copying (induction) in a small model before it learns the swarm's traces, which need the same
    skill on much longer contexts."""
    n = rng.randint(3, 12)
    names: list[str] = []
    while len(names) < n:
        x = _fresh_name(rng)
        if x not in names:
            names.append(x)
    head = f"<|bos|><|im_user|>{rng.choice(_PLACES)}: {', '.join(names)}.{END}"
    kind = rng.randrange(3)
    if kind == 0:
        prompt, target = f"{head}<|im_assistant|>", ", ".join(names)
    elif kind == 1:
        k = rng.randrange(n - 1)
        prompt, target = f"{head}<|tool_result_begin|>{names[k]}<|tool_result_end|><|im_assistant|>", names[k + 1]
    else:
        k = rng.randrange(n)
        prompt = f"{head}<|tool_result_begin|>{k}<|tool_result_end|><|im_assistant|>"
        target = json.dumps({"page_id": f"entity/{names[k].lower()}"}, separators=(",", ":"))
    tok = _check_tokenizer(tokenizer)
    return tok.encode(prompt), tok.encode(target + END), COPY_KINDS[kind]


def copy_accuracy(model: torch.nn.Module, n: int = 120, seed: int = 12345,
                  tokenizer: Tokenizer | None = None) -> dict[str, float]:
    """Exact-match greedy accuracy on ``n`` fresh :func:`copy_example` pairs (its own seed), in all and per kind
    (``list``, ``next``, ``page_id``)."""
    rng = random.Random(seed)
    tok = _check_tokenizer(tokenizer, model)
    pairs = [copy_example(rng, tok) for _ in range(n)]
    got = sample(model, [p for p, _, _ in pairs], max_new_tokens=max(len(t) for _, t, _ in pairs) + 4, temperature=0.0,
                 stops=[tok.im_end_id])
    ok = [float(g[0].tokens == t) for g, (_, t, _) in zip(got, pairs)]
    by = {k: [o for o, (_, _, kk) in zip(ok, pairs) if kk == k] for k in COPY_KINDS}
    return {"all": sum(ok) / len(ok), **{k: (sum(v) / len(v) if v else 0.0) for k, v in by.items()}}


def copy_warmup(lm: torch.nn.Module, steps: int, *, batch_size: int = 48, lr: float = 3e-3, warmup: int = 30,
                seed: int = 0, log: Any = None, tokenizer: Tokenizer | None = None) -> list[float]:
    """Train ``lm`` on :func:`copy_example` batches (loss on targets only) with the shared ``Trainer`` (AdamW,
    warm-up then a constant rate). Returns the loss per step; global RNG states are left as they were."""
    rng = random.Random(seed)
    tok = _check_tokenizer(tokenizer, TextOnlyVLM(lm))
    batches = [[copy_example(rng, tok) for _ in range(batch_size)] for _ in range(steps)]
    seqs = [[(p + t, [False] * len(p) + [True] * len(t)) for p, t, _ in b] for b in batches]
    if steps == 0:
        return []

    class _Log(Callback):
        def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
            log(record["step"] - 1, record["loss"])

    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=0.0, decay="constant", warmup_steps=min(warmup, steps),
                      grad_clip=1.0, optimizer="adamw", log_every=1, eval_at_end=False, save_final=False,
                      bf16=False, progress=False, seed=seed)
    state = capture_rng_state()
    try:
        trainer = Trainer(lm, lambda m, b: m.loss(*b), lambda i: pad_written(seqs[i]), cfg,
                          callbacks=[_Log()] if log is not None else ())
        history = trainer.fit()
    finally:
        restore_rng_state(state)
    return [r["loss"] for r in history if r["split"] == "train"]
