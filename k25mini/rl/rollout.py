"""The RL rollout engine: batched sampling with the MLA latent cache, per-token log-probs kept as pi_old.

:func:`sample` draws ``k`` continuations of every prompt in one batch: prompts of different lengths are
left-padded (a bool mask hides the pads, per-row positions start at 0, as in chapter 05's batched greedy
decoder), images and videos are fused into the prompt, each prompt is prefilled once and its cache rows are
copied ``k`` times. A row stops at a token of ``stops`` (kept: the model must learn to stop), after
``max_new_tokens``, or when its context fills the model's positions. For every sampled token it records

* ``logprobs`` - log pi(token) under the model's own distribution (temperature 1, no truncation): the pi_old of
  the K2.5 loss, and what :func:`sequence_logprobs` recomputes by teacher forcing (they agree to ~1e-6 in fp32;
  the numeric paths differ: incremental absorbed-MLA decode against one masked forward);
* ``sampler_logprobs`` - log of the probability the token was actually drawn with (after ``temperature`` and
  ``top_p``), for importance corrections when sampling is not at temperature 1.

:func:`rollout_with_tool` runs multi-turn episodes with chapter 06's sandboxed code tool inside the loop: each
turn of every live trajectory is sampled in one batch; a turn that ends in ``<|tool_call_end|>`` has its code run
in the question's sandboxed episode and the result appended as tool tokens (``model_mask`` 0: not the policy's,
never trained); a turn that ends in ``<|eos|>`` or a newline is the answer.

    groups = sample(model, prompts, media, k=4, temperature=1.0, top_p=0.95, generator=g)
    logp, mask = sequence_logprobs(model, prompts, media, [s.tokens for s in groups[0]])   # differentiable
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from k25mini.agents.toolcall import DEFAULT_FORMAT
from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import prompt_ids
from k25mini.pretrain.evaluate import NEWLINE, _decode, _keep_rows, _prefill
from k25mini.sft.programs import palette_setup
from k25mini.sft.trajectories import parse_code_call, result_text
from k25mini.world import Item

__all__ = ["Sample", "Trajectory", "sample", "sequence_logprobs", "rollout_with_tool", "default_stops"]


@dataclass
class Sample:
    """One sampled continuation: ``tokens`` (the stop token included when it ended on one), their ``logprobs``
    under the model and ``sampler_logprobs`` under the sampling distribution, and why it ended: ``stop``,
    ``length`` (``max_new_tokens``) or ``context_full`` (the model's positions)."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    finish: str = "length"


def default_stops(tok: Tokenizer | None = None) -> frozenset[int]:
    """``<|eos|>`` and newline: the world's answers are one line."""
    tok = tok or Tokenizer()
    return frozenset({tok.eos_id, NEWLINE})


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def _check_sampling(temperature: Any, top_p: Any) -> None:
    for name, v in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _check_prompts(prompts: Any, media: Any) -> list:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty sequence of token-id lists")
    if any(isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) == 0 for p in prompts):
        raise ValueError("prompts must hold non-empty token-id lists")
    media = [[] for _ in prompts] if media is None else list(media)
    if len(media) != len(prompts):
        raise ValueError(f"media must hold one list per prompt ({len(prompts)}), got {len(media)}")
    return media


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
          banned: list[int] | None = None):
    """Next tokens [B], their model log-probs and their sampler log-probs (both [B], float32). ``banned`` tokens
    are never drawn; their mass stays in the model's log-probs, which therefore equal teacher forcing, but not
    in the sampler's."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    if banned is not None:
        logits = logits.clone()
        logits[:, banned] = float("-inf")
    if temperature == 0:
        nxt = logits.argmax(dim=-1)
        return nxt, logp.gather(1, nxt[:, None])[:, 0], torch.zeros(len(nxt), device=nxt.device)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sp, si = probs.sort(dim=-1, descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p  # mass before a token already reaches top_p (top-1 always kept)
        probs = torch.zeros_like(probs).scatter(-1, si, sp.masked_fill(drop, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return nxt, logp.gather(1, nxt[:, None])[:, 0], probs.gather(1, nxt[:, None])[:, 0].log()


@torch.no_grad()
def _sample_batch(model, tok: Tokenizer, prompts: list[list[int]], media: list, k: int, max_new_tokens: int,
                  temperature: float, top_p: float, stops: frozenset[int],
                  generator: torch.Generator | None, banned: list[int]) -> list[Sample]:
    """Samples of one batch, row-major: prompt 0's k samples, then prompt 1's, ..."""
    lm = model.language_model
    logits, state = _prefill(model, tok, prompts, media)
    if k > 1:
        rep = torch.arange(len(prompts), device=logits.device).repeat_interleave(k)
        logits = logits.index_select(0, rep)
        _keep_rows(state, rep)
    max_pos = lm.config.max_position_embeddings
    out = [Sample() for _ in range(len(prompts) * k)]
    rows = list(range(len(out)))
    for step in range(max_new_tokens):
        nxt, lp, slp = _draw(logits, temperature, top_p, generator, banned)
        room = (state["lens"] + step < max_pos).tolist()  # can this row's new token still be fed back?
        keep = []
        for r, (t, a, b) in enumerate(zip(nxt.tolist(), lp.tolist(), slp.tolist())):
            s = out[rows[r]]
            s.tokens.append(t)
            s.logprobs.append(a)
            s.sampler_logprobs.append(b)
            if t in stops:
                s.finish = "stop"
            elif not room[r]:
                s.finish = "context_full"
            else:
                keep.append(r)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            sel = torch.tensor(keep, device=nxt.device)
            _keep_rows(state, sel)
            nxt, rows = nxt[sel], [rows[r] for r in keep]
        logits = _decode(lm, nxt, step, state)
    return out


def sample(model, prompts: Sequence[Sequence[int]], media: Sequence[Sequence] | None = None, *, k: int = 1,
           max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
           stops: Sequence[int] | None = None, generator: torch.Generator | None = None,
           batch_size: int = 32, ban: Sequence[int] = ()) -> list[list[Sample]]:
    """``k`` sampled continuations of each of ``prompts`` (token ids, media already expanded to one
    ``<|media_pad|>`` per vision token; ``media[i]`` the images/videos of prompt ``i``): a list per prompt of
    ``k`` :class:`Sample`. ``temperature=0`` is greedy. ``batch_size`` counts prompts (each brings ``k`` rows).
    ``<|media_pad|>`` (a placeholder the vision tower fills, never a word) and the tokens of ``ban`` (e.g. the
    tool-call marker, for an environment without tools) are never drawn.
    A prompt longer than the model's positions raises ValueError. The model is left in its training mode."""
    media = _check_prompts(prompts, media)
    _check_int("k", k, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    _check_sampling(temperature, top_p)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    tok = Tokenizer()
    stop_set = default_stops(tok) if stops is None else frozenset(int(t) for t in stops)
    V = model.language_model.config.vocab_size
    if isinstance(ban, (str, bytes)) or any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V
                                            for t in ban):
        raise ValueError(f"ban must be a sequence of token ids in [0, {V}), got {ban!r}")
    banned = sorted({tok.media_pad_id, *ban})
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
        groups: list[list[Sample]] = [[] for _ in prompts]
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            got = _sample_batch(model, tok, [list(prompts[i]) for i in idx], [m for i in idx for m in media[i]], k,
                                max_new_tokens, float(temperature), float(top_p), stop_set, generator, banned)
            for j, i in enumerate(idx):
                groups[i] = got[j * k : (j + 1) * k]
        return groups
    finally:
        model.train(was_training)


def sequence_logprobs(model, prompts: Sequence[Sequence[int]], media: Sequence[Sequence] | None,
                      continuations: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log pi(token) of every ``continuations[i]`` token after ``prompts[i]``, in one left-padded
    forward: ``(logp [B, L], mask [B, L])`` with ``L`` the longest continuation, ``mask`` True on real tokens.
    Differentiable (wrap in ``torch.no_grad()`` to score only); runs in the model's current mode."""
    media = _check_prompts(prompts, media)
    if len(continuations) != len(prompts):
        raise ValueError(f"continuations must hold one list per prompt ({len(prompts)}), got {len(continuations)}")
    lm = model.language_model
    dev = lm.lm_head.weight.device
    full = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    lens = torch.tensor([len(s) for s in full], device=dev)
    B, T = len(full), int(lens.max())
    if T > lm.config.max_position_embeddings:
        raise ValueError(f"sequence length {T} exceeds max_position_embeddings={lm.config.max_position_embeddings}")
    tok = Tokenizer()
    ids = torch.full((B, T), tok.pad_id, dtype=torch.long)
    for r, s in enumerate(full):
        ids[r, T - len(s):] = torch.tensor(s, dtype=torch.long)
    ids = ids.to(dev)
    cols = torch.arange(T, device=dev)
    start = T - lens
    valid = cols[None, :] >= start[:, None]
    mask = ((cols[None, :] <= cols[:, None])[None] & valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=dev)
    positions = (cols[None, :] - start[:, None]).clamp(min=0)
    flat_media = [m for ms in media for m in ms]
    h = lm.model(inputs_embeds=model.embed(ids, flat_media or None), position_ids=positions, attn_mask=mask[:, None])
    L = max((len(c) for c in continuations), default=0)
    out = torch.zeros(B, L, device=dev)
    keep = torch.zeros(B, L, dtype=torch.bool, device=dev)
    if L == 0:
        return out, keep
    # the logits that predict continuation token j of row r sit at column T - len(c_r) - 1 + j
    clen = torch.tensor([len(c) for c in continuations], device=dev)
    j = torch.arange(L, device=dev)
    keep = j[None, :] < clen[:, None]
    src = (T - clen - 1)[:, None] + j[None, :]
    src = torch.where(keep, src, torch.full_like(src, T - 1))
    hs = h.gather(1, src[:, :, None].expand(B, L, h.shape[-1]))
    logp = torch.log_softmax(lm.lm_head(hs).float(), dim=-1)
    targets = torch.zeros(B, L, dtype=torch.long, device=dev)
    for r, c in enumerate(continuations):
        if len(c):
            targets[r, : len(c)] = torch.tensor(list(c), dtype=torch.long)
    got = logp.gather(2, targets[:, :, None])[:, :, 0]
    return torch.where(keep, got, out), keep


@dataclass
class Trajectory:
    """One multi-turn episode after the prompt: ``tokens`` (model turns and tool results), ``model_mask``
    (1 on tokens the policy sampled), ``logprobs`` / ``sampler_logprobs`` (0 on tool tokens), the ``answer``,
    ``calls`` / ``valid_calls``, per-call ``statuses`` and the ``finish`` of its last turn."""

    tokens: list[int] = field(default_factory=list)
    model_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    answer: str = ""
    calls: int = 0
    valid_calls: int = 0
    turns: int = 0
    statuses: list[str] = field(default_factory=list)
    finish: str = "length"

    def _add(self, toks: Sequence[int], lp: Sequence[float], slp: Sequence[float], policy: bool) -> None:
        self.tokens += list(toks)
        self.model_mask += [int(policy)] * len(toks)
        self.logprobs += list(lp) if policy else [0.0] * len(toks)
        self.sampler_logprobs += list(slp) if policy else [0.0] * len(toks)


def _episode_arrays(item: Item) -> dict[str, Any]:
    if len(item.images) != 1:
        return {}
    a = item.images[0]
    return {"frames": a} if a.ndim == 4 else {"image": a}


def rollout_with_tool(model, tok: Tokenizer, items: Sequence[Item], tool, *, k: int = 1, max_calls: int = 1,
                      max_new_tokens: int = 160, temperature: float = 1.0, top_p: float = 1.0,
                      generator: torch.Generator | None = None, batch_size: int = 32) -> list[list[Trajectory]]:
    """``k`` sampled tool-using trajectories per item (a list per item). A call beyond ``max_calls`` ends the
    episode with what came before the call as the answer; a call's code runs in a fresh sandboxed episode of
    ``tool`` for its item (the question's image/frames and the palette loaded)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items must be a non-empty sequence of eval items")
    _check_int("max_calls", max_calls, 0)
    _check_int("k", k, 1)
    fmt = DEFAULT_FORMAT
    call_end = tok.special_tokens[fmt.call_end]
    call_begin = tok.special_tokens[fmt.call_begin]
    stops = default_stops(tok) | {call_end}
    base = [prompt_ids(it, tok, model.media_token_counts) for it in items]
    trajs = [[Trajectory() for _ in range(k)] for _ in items]
    max_pos = model.language_model.config.max_position_embeddings
    live = [(i, j) for i in range(len(items)) for j in range(k)]
    first = True
    while live:
        full = [(i, j) for i, j in live if len(base[i]) + len(trajs[i][j].tokens) >= max_pos]
        for i, j in full:
            trajs[i][j].finish = "context_full"
        live = [x for x in live if x not in set(full)]
        if not live:
            break
        if first:  # one prefill per item, its cache copied k times
            got = sample(model, base, [it.images for it in items], k=k, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, stops=stops, generator=generator,
                         batch_size=batch_size)
            turns = {(i, j): got[i][j] for i, j in live}
            first = False
        else:
            got = sample(model, [base[i] + trajs[i][j].tokens for i, j in live], [items[i].images for i, _ in live],
                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stops=stops,
                         generator=generator, batch_size=batch_size)
            turns = {x: g[0] for x, g in zip(live, got)}
        nxt = []
        for i, j in live:
            s, tr = turns[(i, j)], trajs[i][j]
            tr.turns += 1
            tr._add(s.tokens, s.logprobs, s.sampler_logprobs, True)
            tr.finish = s.finish
            out = s.tokens
            if call_begin not in out or s.tokens[-1] != call_end:
                # an answer (or a turn that ran out of tokens / positions): the episode ends here
                cut = out.index(call_begin) if call_begin in out else len(out)
                tr.answer = tok.decode([t for t in out[:cut] if t not in stops], skip_special=True).strip()
                if call_begin in out:
                    tr.calls += 1
                    tr.statuses.append("unfinished_call")
                continue
            tr.calls += 1
            before = tok.decode(out[: out.index(call_begin)], skip_special=True).strip()
            if tr.calls > max_calls:
                tr.answer = before
                tr.statuses.append("over_budget")
                continue
            code, err = parse_code_call(tok.decode(out, skip_special=False))
            if code is None:
                obs_text, status = f"Error: {err}", "invalid"
            else:
                tr.valid_calls += 1
                tool.start(**_episode_arrays(items[i]), setup=palette_setup())
                try:
                    obs = tool.run(code)
                finally:
                    tool.close()
                obs_text, status = obs.text, obs.status
            tr.statuses.append(status)
            res = tok.encode(result_text(obs_text))
            tr._add(res, [], [], False)
            nxt.append((i, j))
        live = nxt
    return trajs
