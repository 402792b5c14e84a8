"""Swarm policies: a k25mini LM that writes compact tool calls as tokens, and scripted teachers for SFT.

:class:`LMPolicy` implements the runtime's one-method interface (``async act(view)``). Concurrent agents
(many episodes, many subagents) are sampled in one batch: every ``act`` call queues its prompt and a
flusher runs one batched generation once the event loop has gone quiet. All prompts have the same
length (:data:`~k25mini.swarm.codec.PROMPT_LEN`), so the batch needs no padding. Each step's ``Action.info``
keeps ``prompt_ids``, ``completion_ids`` and the sampler's ``logp`` (π_old for the RL loss).

A *frozen* policy (``frozen=True``: the subagents) has ``requires_grad=False`` on every weight and, with
greedy decoding, memoises prompt -> completion (exact: frozen weights + argmax).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import torch
from torch import nn

from k25mini.agents import Action, AgentView
from k25mini.data.tokenizer import Tokenizer
from k25mini.swarm.codec import compact_text, expand_calls, observe, parse_compact, render_prompt

__all__ = ["LMPolicy", "ScriptedSwarmPolicy", "prompt_text", "worker_decision", "orchestrator_decision"]

_TOK = Tokenizer()


def prompt_text(state_line: str) -> str:
    """The LM's full prompt around a state line."""
    return f"<|bos|><|im_user|>{state_line}<|im_assistant|>"


class LMPolicy:
    """A K2 causal LM as an agent policy. ``temperature=0``: greedy; otherwise sampling (seeded)."""

    def __init__(self, model: nn.Module, *, temperature: float = 0.0, max_new_tokens: int = 80, seed: int = 0,
                 frozen: bool = False, idle_ticks: int = 8) -> None:
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0; got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        self.model, self.temperature, self.max_new_tokens = model, float(temperature), int(max_new_tokens)
        self.frozen = frozen
        if frozen:
            for p in model.parameters():
                p.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.idle_ticks = idle_ticks
        self.end_id = _TOK.im_end_id
        self.memo: dict[str, tuple[list[int], list[float]]] = {}
        self._pending: list[tuple[list[int], asyncio.Future]] = []
        self._flushing = False
        self.n_generated = 0  # completions actually sampled (not memoised): a cost counter

    # -- batched generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        """Completions (token ids up to and including ``<|im_end|>``) and their log-probs, one per prompt."""
        if not prompts:
            return []
        lens = {len(p) for p in prompts}
        if len(lens) != 1:
            raise ValueError(f"prompts must share one length for batched sampling; got lengths {sorted(lens)}")
        model = self.model
        was_training = model.training
        model.eval()
        try:
            ids = torch.tensor(prompts, dtype=torch.long)
            B = ids.shape[0]
            cache = model.new_kv_cache()
            logits = model(ids, kv_cache=cache)[:, -1].float()
            out = torch.full((B, self.max_new_tokens), self.end_id, dtype=torch.long)
            logps = torch.zeros(B, self.max_new_tokens)
            done = torch.zeros(B, dtype=torch.bool)
            n = 0
            for t in range(self.max_new_tokens):
                logp_all = torch.log_softmax(logits / (self.temperature or 1.0), dim=-1)
                if self.temperature == 0:
                    nxt = logp_all.argmax(-1)
                else:
                    nxt = torch.multinomial(logp_all.exp(), 1, generator=self.generator).squeeze(1)
                nxt = torch.where(done, torch.full_like(nxt, self.end_id), nxt)
                out[:, t] = nxt
                logps[:, t] = logp_all.gather(1, nxt[:, None]).squeeze(1)
                n = t + 1
                done |= nxt == self.end_id
                if bool(done.all()):
                    break
                logits = model(nxt[:, None], kv_cache=cache)[:, -1].float()
        finally:
            model.train(was_training)
        self.n_generated += B
        res = []
        for b in range(B):
            row = out[b, :n].tolist()
            k = row.index(self.end_id) + 1 if self.end_id in row else n
            res.append((row[:k], logps[b, :k].tolist()))
        return res

    async def _flush_when_idle(self) -> None:
        seen, idle = -1, 0
        while idle < self.idle_ticks:  # let every runnable agent reach its act() first
            await asyncio.sleep(0)
            idle = idle + 1 if len(self._pending) == seen else 0
            seen = len(self._pending)
        batch, self._pending, self._flushing = self._pending, [], False
        try:
            results = self.generate([p for p, _ in batch])
        except Exception as e:  # surface as a policy error in each waiting agent
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), r in zip(batch, results):
            if not fut.done():
                fut.set_result(r)

    async def complete(self, prompt: str) -> tuple[list[int], list[int], list[float]]:
        ids = _TOK.encode(prompt)
        if self.temperature == 0 and prompt in self.memo:
            comp, lp = self.memo[prompt]
            return ids, comp, lp
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((ids, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush_when_idle())
        comp, lp = await fut
        if self.temperature == 0:
            self.memo[prompt] = (comp, lp)
        return ids, comp, lp

    async def act(self, view: AgentView) -> Action | str:
        st = observe(view)
        prompt = prompt_text(render_prompt(st))
        ids, comp, lp = await self.complete(prompt)
        text = _TOK.decode(comp)
        info = {"prompt_ids": ids, "completion_ids": comp, "logp": lp, "state": render_prompt(st)}
        calls = parse_compact(text)
        if calls is None:  # malformed: the runtime parses the raw text and reports the errors as observations
            return Action(text=text, calls=None, info=info)
        return Action(text=text, calls=expand_calls(calls, st), info=info)


# ------------------------------------------------------------------------------------- scripted teachers


def worker_decision(st) -> list[tuple[str, int | None]]:
    """The single agent / subagent teacher: read region pages, browse items one by one, finish in time."""
    if st.steps_left <= 1:
        return [("f", None)]
    if st.kind == "deep":
        if not st.path and st.start and st.start.startswith("the ") and not st.searched:
            return [("s", None)]
        return [("b", None)] if len(st.path) < st.hops else [("f", None)]
    if st.regions_todo or st.pending:
        return [("b", None)]
    return [("f", None)]


def _unit(task: str, seed: int, salt: str) -> float:
    return zlib.crc32(f"{seed}|{salt}|{task}".encode()) / 2**32


def orchestrator_decision(st, seed: int = 0, p_parallel: float = 0.1,
                          fanout: tuple[int, ...] = (2, 3, 4)) -> list[tuple[str, int | None]]:
    """The orchestrator's warm-start teacher: serial like the worker on most tasks; on a ``p_parallel``
    share (decided per task) it creates a subagent and splits the pending items over K subagents (K from
    ``fanout``, never more than the pending items) in one turn."""
    parallel = _unit(st.task, seed, "mode") < p_parallel
    if not parallel or st.steps_left <= 1 or st.kind == "deep":
        return worker_decision(st)
    calls: list[tuple[str, int | None]] = []
    if st.regions_todo:
        return [("b", None)]
    if st.pending and st.steps_left > 3:
        if not st.created:
            calls.append(("c", None))
        k = fanout[int(_unit(st.task, seed, "fanout") * len(fanout))]
        calls.append(("a", min(k, len(st.pending))))
        return calls
    return [("f", None)]


class ScriptedSwarmPolicy:
    """A teacher that writes the same compact completions an LM would (for SFT traces and baselines)."""

    def __init__(self, role: str = "worker", seed: int = 0, p_parallel: float = 0.1,
                 fanout: tuple[int, ...] = (2, 3, 4)) -> None:
        if role not in ("worker", "orchestrator"):
            raise ValueError(f"role must be 'worker' or 'orchestrator'; got {role!r}")
        self.role, self.seed, self.p_parallel, self.fanout = role, seed, p_parallel, fanout

    async def act(self, view: AgentView) -> Action:
        st = observe(view)
        dec = worker_decision(st) if self.role == "worker" else \
            orchestrator_decision(st, self.seed, self.p_parallel, self.fanout)
        text = compact_text(dec)
        line = render_prompt(st)
        ids = _TOK.encode(prompt_text(line))
        info: dict[str, Any] = {"prompt_ids": ids, "completion_ids": _TOK.encode(text), "state": line}
        return Action(text=text, calls=expand_calls(dec, st), info=info)


