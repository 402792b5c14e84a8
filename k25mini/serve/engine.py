"""From a checked chat request to token ids, through the model, and back to OpenAI choices.

* :func:`render_prompt` writes the conversation in Kimi's chat layout with the toy tokenizer's special tokens
  (tools declared in a ``tool_declare`` system turn, assistant tool calls between the tool-call markers, tool
  results between ``<|tool_result_begin|>`` / ``<|tool_result_end|>``), one media placeholder per image or video
  chunk, expanded to the model's vision-token counts. Message text is encoded byte by byte, so a literal
  ``<|im_end|>`` typed by a user stays text and cannot forge a turn.
* :class:`ModelEngine` samples with chapter 07's rollout engine (:func:`k25mini.rl.rollout.sample`);
  :class:`ScriptedEngine` answers by a Python rule instead (a stand-in model for protocol tests and demos).
* :func:`parse_completion` maps generated tokens to ``content`` and ``tool_calls``.
* :class:`Batcher` is the bounded queue and the one worker thread that runs batches.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from k25mini.agents.toolcall import DEFAULT_FORMAT
from k25mini.data.tokenizer import Tokenizer, media_placeholder
from k25mini.serve.protocol import APIError, ChatRequest

__all__ = ["Prompt", "Completion", "GenJob", "render_prompt", "ModelEngine", "ScriptedEngine", "parse_completion",
           "Batcher", "QueueFull"]

_ROLE_TOKEN = {"system": "<|im_system|>", "user": "<|im_user|>", "assistant": "<|im_assistant|>",
               "tool": "<|im_system|>"}
FMT = DEFAULT_FORMAT


@dataclass
class Prompt:
    """Token ids (media pads expanded), the media in order, and the forced start of the answer (tool_choice)."""

    ids: list[int]
    media: list[Any]
    forced: list[int] = field(default_factory=list)


@dataclass
class Completion:
    tokens: list[int]
    finish: str  # "stop" | "length"


@dataclass(frozen=True)
class Params:
    """What a batch must share: sampling settings, stop tokens and banned tokens."""

    temperature: float
    top_p: float
    max_tokens: int
    n: int
    stops: tuple[int, ...]
    ban: tuple[int, ...]


@dataclass
class GenJob:
    prompt: Prompt
    params: Params
    seed: int | None
    future: cf.Future = field(default_factory=cf.Future)
    sink: Callable[[int, int], None] | None = None  # (choice index, token id) as each token is drawn (streaming)


class QueueFull(Exception):
    pass


def _bytes(text: str) -> list[int]:
    """UTF-8 bytes as token ids, specials never recognised; a lone surrogate -> APIError."""
    try:
        return list(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise APIError(400, "message text must be valid Unicode (it holds a lone surrogate)", "messages",
                       "invalid_value") from None


def _type(schema: Any) -> str:
    t = schema.get("type", "any") if isinstance(schema, dict) else "any"
    return "|".join(map(str, t)) if isinstance(t, list) else str(t)


def declare_tools(tools: Sequence[Any]) -> str:
    """The tools as compact lines, ``name(arg: type, optional?: type) - description``: a small model's context is
    short (the nano preset has 1024 positions), and full JSON schemas would fill most of it."""
    lines = []
    for t in tools:
        props = t.parameters.get("properties", {})
        req = set(t.parameters.get("required", []))
        args = ", ".join(f"{a}{'' if a in req else '?'}: {_type(s)}" for a, s in props.items())
        lines.append(f"{t.name}({args})" + (f" - {t.description}" if t.description else ""))
    return "\n".join(lines)


def render_prompt(req: ChatRequest, tok: Tokenizer, counts_fn: Callable[[Any], list[int]],
                  chunk_size: int = 4, template: str = "chat") -> Prompt:
    """The request as one prompt (see the module docstring for the layout). ``template="plain"``: the toy world's
    question format that chapters 05-07 train on, ``<|bos|>`` + every message's content in order (newline
    between messages) + ``" "``, so a trained checkpoint answers as it does in its evaluations."""
    if template not in ("chat", "plain"):
        raise ValueError(f"template must be 'chat' or 'plain', got {template!r}")
    sp = tok.special_tokens
    ids: list[int] = [tok.bos_id]
    media: list[Any] = []

    def media_ids(kind: str, v: Any) -> list[int]:
        ph = tok.encode(media_placeholder("image") if kind == "image" else
                        media_placeholder("video", num_frames=len(v), chunk_size=chunk_size))
        media.append(v)
        return tok.expand_media(ph, counts_fn(v))

    if template == "plain":
        if req.tools and req.tool_choice != "none":
            raise APIError(400, "tools need the chat template; this server uses the plain question template",
                           "tools", "unsupported_parameter")
        for i, m in enumerate(req.messages):
            ids += _bytes("\n") if i else []
            for kind, v in m.parts:
                ids += _bytes(v) if kind == "text" else media_ids(kind, v)
        return Prompt(ids + _bytes(" "), media)

    def turn(role_tok: str, role_name: str, body: list[int]) -> None:
        ids.extend([sp[role_tok], *_bytes(role_name), sp["<|im_middle|>"], *body, tok.im_end_id])

    if req.tools and req.tool_choice != "none":
        turn("<|im_system|>", "tool_declare", _bytes(declare_tools(req.tools)))
    for m in req.messages:
        body: list[int] = []
        for kind, v in m.parts:
            body += _bytes(v) if kind == "text" else media_ids(kind, v)
        if m.role == "assistant" and m.tool_calls:
            body.append(sp[FMT.section_begin])
            for i, (_, name, args) in enumerate(m.tool_calls):  # names are checked: [A-Za-z0-9_-] only
                body += tok.encode(f"{FMT.call_begin}functions.{name}:{i}{FMT.arg_begin}")
                body += [*_bytes(args), sp[FMT.call_end]]
            body.append(sp[FMT.section_end])
        if m.role == "tool":
            body = [sp["<|tool_result_begin|>"], *body, sp["<|tool_result_end|>"]]
        turn(_ROLE_TOKEN[m.role], m.name if m.role == "tool" and m.name else m.role, body)
    ids += [sp["<|im_assistant|>"], *_bytes("assistant"), sp["<|im_middle|>"]]
    forced: list[int] = []
    if req.tool_choice == "function":
        forced = tok.encode(f"{FMT.section_begin}{FMT.call_begin}functions.{req.tool_choice_name}:0{FMT.arg_begin}")
    elif req.tool_choice == "required":
        forced = tok.encode(FMT.section_begin + FMT.call_begin)
    return Prompt(ids, media, forced)


def parse_completion(text: str, *, parallel: bool = True) -> tuple[str, list[tuple[str, str]]]:
    """Generated text -> (content, [(name, arguments)]). Only complete calls (``call_begin`` ... ``call_end``)
    become tool calls; their arguments are returned as written (stripped), JSON or not. Markers never reach
    the content."""
    calls: list[tuple[str, str]] = []
    content: list[str] = []
    pos = 0
    while True:
        start = text.find(FMT.call_begin, pos)
        if start < 0:
            content.append(text[pos:])
            break
        content.append(text[pos:start])
        body_start = start + len(FMT.call_begin)
        end = text.find(FMT.call_end, body_start)
        if end < 0:
            break  # an unfinished call (max_tokens): dropped
        body = text[body_start:end]
        head, sep, args = body.partition(FMT.arg_begin)
        if not sep:  # name{...} without the argument marker
            cut = head.find("{")
            head, args = (head, "") if cut < 0 else (head[:cut], head[cut:])
        name = head.strip()
        if name.startswith("functions."):
            name = name[len("functions."):]
        name = name.split(":", 1)[0].strip()
        if name:
            calls.append((name, args.strip() or "{}"))
        pos = end + len(FMT.call_end)
    rest = "".join(content)
    for marker in FMT.specials():
        rest = rest.replace(marker, "")
    if not parallel:
        calls = calls[:1]
    return rest, calls


class ModelEngine:
    """Generation with a K2.5 model through :func:`k25mini.rl.rollout.sample` (MLA cache, batched prompts of
    mixed lengths with images and videos)."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.tok = Tokenizer()
        self.batch_size = batch_size
        self.max_positions = int(model.language_model.config.max_position_embeddings)
        self.patch_size = int(model.config.vision.patch_size)
        self.chunk_size = int(model.config.vision.temporal_chunk_size)
        self._gen = torch.Generator().manual_seed(0)

    def counts(self, media: Any) -> list[int]:
        return self.model.media_token_counts(media)

    def generate(self, jobs: Sequence[GenJob]) -> list[list[Completion]]:
        """Jobs that share :class:`Params` (and at most one seed) in one batch: :func:`k25mini.rl.rollout.sample`,
        or, when a job streams, :meth:`_stream` (the same sampling loop, reporting every token as it is drawn)."""
        from k25mini.rl.rollout import sample

        p = jobs[0].params
        gen = torch.Generator().manual_seed(jobs[0].seed) if jobs[0].seed is not None else self._gen
        prompts = [j.prompt.ids + j.prompt.forced for j in jobs]
        media = [j.prompt.media for j in jobs]
        if any(j.sink is not None for j in jobs):
            return self._stream(jobs, prompts, media, p, gen)
        groups = sample(self.model, prompts, media, k=p.n, max_new_tokens=p.max_tokens, temperature=p.temperature,
                        top_p=p.top_p, stops=p.stops, generator=gen, batch_size=self.batch_size, ban=p.ban)
        return [[Completion(s.tokens, "stop" if s.finish == "stop" else "length") for s in g] for g in groups]

    @torch.no_grad()
    def _stream(self, jobs: Sequence[GenJob], prompts: list[list[int]], media: list, p: Params,
                gen: torch.Generator) -> list[list[Completion]]:
        """The rollout engine's batch loop (prefill once, ``n`` rows per prompt, MLA-cache decode, rows dropped as
        they stop; its ``_draw`` and chapter 05's ``_prefill`` / ``_decode``) with a callback per drawn token. For
        one prompt (every seeded request) it draws exactly what ``sample`` draws (tested: stream == non-stream)."""
        from k25mini.pretrain.evaluate import _decode, _keep_rows, _prefill
        from k25mini.rl.rollout import _draw

        model, lm, k = self.model, self.model.language_model, p.n
        order = sorted(range(len(jobs)), key=lambda i: len(prompts[i]))  # as sample() orders a batch
        logits, state = _prefill(model, self.tok, [prompts[i] for i in order], [m for i in order for m in media[i]])
        if k > 1:
            rep = torch.arange(len(order), device=logits.device).repeat_interleave(k)
            logits = logits.index_select(0, rep)
            _keep_rows(state, rep)
        banned = sorted({self.tok.media_pad_id, *p.ban})
        out = [[Completion([], "length") for _ in range(k)] for _ in jobs]
        slots = [(order[r // k], r % k) for r in range(len(order) * k)]  # row -> (job, choice)
        rows = list(range(len(slots)))
        for step in range(p.max_tokens):
            nxt, _, _ = _draw(logits, p.temperature, p.top_p, gen, banned)
            room = (state["lens"] + step < self.max_positions).tolist()
            keep = []
            for r, t in enumerate(nxt.tolist()):
                j, c = slots[rows[r]]
                out[j][c].tokens.append(t)
                if jobs[j].sink is not None:
                    jobs[j].sink(c, t)
                if t in p.stops:
                    out[j][c].finish = "stop"
                elif room[r]:
                    keep.append(r)
            if not keep or step == p.max_tokens - 1:
                break
            if len(keep) < len(rows):
                sel = torch.tensor(keep, device=nxt.device)
                _keep_rows(state, sel)
                nxt, rows = nxt[sel], [rows[r] for r in keep]
            logits = _decode(lm, nxt, step, state)
        return out


class ScriptedEngine:
    """A stand-in model: ``rule(prompt_text, n_index) -> answer text`` (special-token strings such as
    ``<|tool_call_begin|>`` become their single tokens). Same protocol path as :class:`ModelEngine`; used by
    the tool-call tests and to drive the swarm over HTTP deterministically."""

    def __init__(self, rule: Callable[[str, int], str], *, max_positions: int = 32768, patch_size: int = 8,
                 delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.rule, self.tok = rule, Tokenizer()
        self.max_positions, self.patch_size, self.chunk_size = max_positions, patch_size, 4
        self.batch_size, self.delay_s, self.gate = 32, delay_s, gate

    def counts(self, media: Any) -> list[int]:
        chunks = 1 if media.ndim == 3 else -(-media.shape[0] // self.chunk_size)
        return [1] * chunks

    def generate(self, jobs: Sequence[GenJob]) -> list[list[Completion]]:
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for j in jobs:
            text = self.tok.decode(j.prompt.ids + j.prompt.forced)
            group = []
            for i in range(j.params.n):
                toks = self.tok.encode(self.rule(text, i))[: j.params.max_tokens]
                stop = next((t for t, x in enumerate(toks) if x in j.params.stops), None)
                group.append(Completion(toks[: stop + 1], "stop") if stop is not None else
                             Completion(toks, "length" if len(toks) >= j.params.max_tokens else "stop"))
                for t in group[-1].tokens if j.sink is not None else ():
                    j.sink(i, t)
            out.append(group)
        return out


class Batcher:
    """A bounded queue of :class:`GenJob` and one worker thread. The worker takes the oldest job, waits up to
    ``wait_s`` for more (at most ``max_batch``), groups them by :class:`Params` (a job with a ``seed`` runs in a
    group of its own, so its output does not depend on what it was batched with) and runs each group as one
    ``engine.generate`` call. :meth:`submit` raises :class:`QueueFull` when ``max_queue`` jobs are waiting."""

    def __init__(self, engine: Any, max_queue: int = 128, max_batch: int = 32, wait_s: float = 0.01) -> None:
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.q: queue.Queue[GenJob | None] = queue.Queue(maxsize=max_queue)
        self.batches: list[int] = []  # sizes of the groups run so far (for tests and the benchmark)
        self._thread = threading.Thread(target=self._loop, name="k25mini-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: GenJob) -> cf.Future:
        try:
            self.q.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None
        return job.future

    def close(self) -> None:
        """Stop the worker after the jobs already queued (idempotent)."""
        if self._thread.is_alive():
            self.q.put(None)  # blocks while the queue is full: the worker is draining it
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            first = self.q.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.wait_s
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    nxt = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            groups: dict[Any, list[GenJob]] = {}
            for j in jobs:
                key = (j.params, j.seed, id(j)) if j.seed is not None else (j.params,)
                groups.setdefault(key, []).append(j)
            for group in groups.values():
                live = [j for j in group if j.future.set_running_or_notify_cancel()]
                if not live:
                    continue
                self.batches.append(len(live))
                try:
                    results = self.engine.generate(live)
                except Exception as e:  # noqa: BLE001 - every job must get an answer
                    for j in live:
                        j.future.set_exception(e)
                    continue
                for j, r in zip(live, results):
                    j.future.set_result(r)
            if stop:
                return
