"""The RL rollout engine (k25mini.rl.rollout): sampled log-probs against teacher forcing on mixed-length batches
with images, video, text-only prompts and tool calls; greedy equals chapter 05's decoder; the sampler draws
from the distribution it reports; bad arguments name themselves."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

from k25mini.agents.toolcall import DEFAULT_FORMAT
from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.docs import prompt_ids
from k25mini.pretrain.evaluate import NEWLINE, greedy_generate
from k25mini.rl import rollout
from k25mini.rl.rollout import rollout_with_tool, sample, sequence_logprobs
from k25mini.sft.trajectories import call_text
from k25mini.world import World, make_eval_suite
from tests.rl.printable import printable_model

TOK = Tokenizer()
# fp32 on CPU: the sampler's logits come from a left-padded prefill plus incremental absorbed-MLA decode steps,
# teacher forcing from one masked forward; the sums are ordered differently.
# Measured max |diff| 9.5e-7 (nano, 30 samples of 16 tokens).
ATOL = 1e-5


@pytest.fixture(scope="module")
def items():
    """Images, a 4-frame video and text-only prompts of different lengths."""
    w = World(0, scale="smoke")
    its = make_eval_suite(w, "VisReason", 6) + make_eval_suite(w, "OCR", 2) + make_eval_suite(w, "TextKnow", 2)
    assert any(im.ndim == 4 for it in its for im in it.images), "no video in the mix"
    assert any(not it.images for it in its)
    return its


@pytest.fixture(scope="module")
def model():
    """Random init with the lm_head scaled up over printable ASCII + eos + newline: peaked, varied samples."""
    return printable_model(0).eval()


def _prompts(model, items):
    return [prompt_ids(it, TOK, model.media_token_counts) for it in items], [it.images for it in items]


def _teacher(model, prompts, media, groups):
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_m = [m for m, g in zip(media, groups) for _ in g]
    conts = [s.tokens for g in groups for s in g]
    with torch.no_grad():
        logp, mask = sequence_logprobs(model, flat_p, flat_m, conts)
    return logp, mask, conts


@pytest.mark.parametrize("temperature,top_p,batch_size", [(1.0, 1.0, 64), (0.7, 0.9, 3), (1.3, 1.0, 1)])
def test_sampled_logprobs_equal_teacher_forcing(model, items, temperature, top_p, batch_size):
    prompts, media = _prompts(model, items)
    assert len({len(p) for p in prompts}) > 3  # mixed lengths in one batch
    g = torch.Generator().manual_seed(1)
    stops = list(range(97, 107))  # 'a'..'j': rows stop at different steps under this random model
    groups = sample(model, prompts, media, k=3, max_new_tokens=10, temperature=temperature, top_p=top_p,
                    generator=g, batch_size=batch_size, stops=stops)
    assert [len(x) for x in groups] == [3] * len(items)
    lengths = [len(s.tokens) for x in groups for s in x]
    assert min(lengths) < 10 <= max(lengths), lengths  # rows stop at different steps
    assert len({tuple(s.tokens) for x in groups for s in x}) > len(items)  # samples differ within groups
    logp, mask, conts = _teacher(model, prompts, media, groups)
    flat = [s for x in groups for s in x]
    assert mask.sum().item() == sum(lengths)
    for r, s in enumerate(flat):
        ref = logp[r, : len(s.tokens)]
        assert torch.allclose(torch.tensor(s.logprobs), ref, atol=ATOL, rtol=0), (r, s.logprobs, ref.tolist())
        assert s.finish in ("stop", "length")
        assert (s.finish == "stop") == (s.tokens[-1] in stops) and not set(s.tokens[:-1]) & set(stops)
        assert all(lp <= 1e-6 and math.isfinite(lp) for lp in s.sampler_logprobs)


def test_sampler_logprobs_are_model_logprobs_at_t1(model, items):
    """Equal up to the banned <|media_pad|>'s mass: the sampler renormalises without it."""
    prompts, media = _prompts(model, items[:4])
    groups = sample(model, prompts, media, k=2, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = rollout._prefill(model, TOK, prompts[:1], media[0])
    gap = -math.log1p(-float(torch.softmax(logits[0], -1)[TOK.media_pad_id]))  # renormalising without it
    assert 0 < gap < 1e-2
    for s in (s for x in groups for s in x):
        d = torch.tensor(s.sampler_logprobs) - torch.tensor(s.logprobs)
        assert (d >= -1e-6).all() and (d <= 3 * gap).all(), d


def test_greedy_equals_chapter_05_decoder(model, items):
    prompts, media = _prompts(model, items)
    model.train()
    groups = sample(model, prompts, media, k=2, max_new_tokens=10, temperature=0.0)
    assert model.training  # the mode is restored
    model.eval()
    ref = greedy_generate(model, prompts, media, 10, {TOK.eos_id: True, NEWLINE: True})
    for x, r in zip(groups, ref):
        assert x[0].tokens == x[1].tokens == r
        assert x[0].sampler_logprobs == [0.0] * len(r)
    # a vanishing top_p keeps only the top token: greedy again
    tiny = sample(model, prompts, media, max_new_tokens=10, top_p=1e-9, generator=torch.Generator().manual_seed(5))
    assert [x[0].tokens for x in tiny] == ref


def test_same_generator_same_samples(model, items):
    prompts, media = _prompts(model, items[:3])
    a = sample(model, prompts, media, k=2, max_new_tokens=8, generator=torch.Generator().manual_seed(3))
    b = sample(model, prompts, media, k=2, max_new_tokens=8, generator=torch.Generator().manual_seed(3))
    assert [[s.tokens for s in x] for x in a] == [[s.tokens for s in x] for x in b]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.8)])
def test_first_token_frequencies_follow_the_sampling_distribution(model, items, temperature, top_p):
    """4000 one-token samples of one prompt: empirical frequencies within 4 binomial standard errors (+ 0.003)
    of the tempered, top-p-truncated softmax."""
    prompts, media = _prompts(model, items[:1])
    n = 4000
    got = sample(model, prompts, media, k=n, max_new_tokens=1, temperature=temperature, top_p=top_p,
                 generator=torch.Generator().manual_seed(11))[0]
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, prompts, media, [[0]])
        logits, _ = rollout._prefill(model, TOK, [prompts[0]], media[0])
    logits = logits.clone()
    logits[0, TOK.media_pad_id] = float("-inf")  # never drawn
    probs = torch.softmax(logits[0].double() / temperature, -1)
    if top_p < 1:
        sp, si = probs.sort(descending=True)
        keep = (sp.cumsum(0) - sp) < top_p
        probs = torch.zeros_like(probs).scatter(0, si, sp * keep)
        probs = probs / probs.sum()
    counts = torch.bincount(torch.tensor([s.tokens[0] for s in got]), minlength=len(probs)).double() / n
    assert counts[probs == 0].sum() == 0  # nothing outside the nucleus
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts - probs).abs() <= 4 * se + 0.003).all()
    assert probs.max() < 0.9  # the test would be vacuous on a near-deterministic distribution
    # the reported sampler log-prob is the log of that distribution
    for s in got[:50]:
        assert abs(s.sampler_logprobs[0] - math.log(probs[s.tokens[0]])) < 1e-4


def test_context_full_and_stops(model):
    cfg = preset("nano")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, max_position_embeddings=24))
    torch.manual_seed(0)
    m = K25ForConditionalGeneration(cfg)
    long, short = list(range(40, 60)), list(range(40, 44))
    got = sample(m, [long, short], None, k=2, max_new_tokens=12, stops=[], generator=torch.Generator().manual_seed(0))
    assert all(len(s.tokens) == 24 - 20 + 1 and s.finish == "context_full" for s in got[0])
    assert all(len(s.tokens) == 12 and s.finish == "length" for s in got[1])
    with torch.no_grad():
        lp, mask = sequence_logprobs(m, [long, short], None, [got[0][0].tokens[:-1], got[1][0].tokens])
    assert torch.allclose(lp[1], torch.tensor(got[1][0].logprobs), atol=ATOL)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        sample(m, [list(range(40, 65))], None, max_new_tokens=2)


def test_sequence_logprobs_is_differentiable(model, items):
    prompts, media = _prompts(model, items[:2])
    groups = sample(model, prompts, media, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    logp, mask = sequence_logprobs(model, prompts, media, [x[0].tokens for x in groups])
    (logp * mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("bad,match", [
    (dict(k=0), "k must"), (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(batch_size=True), "batch_size"), (dict(generator=3), "generator"),
])
def test_bad_arguments_name_themselves(model, bad, match):
    with pytest.raises(ValueError, match=match):
        sample(model, [[40, 41]], None, **bad)


def test_bad_prompts(model):
    for prompts in ([], "abc", [[]], [[1], "x"]):
        with pytest.raises(ValueError, match="prompts"):
            sample(model, prompts, None)
    with pytest.raises(ValueError, match="media"):
        sample(model, [[40]], [[], []])
    with pytest.raises(ValueError, match="continuations"):
        sequence_logprobs(model, [[40]], None, [])


# ----------------------------------------------------------------------------------------------- tool rollouts


@dataclass
class Obs:
    status: str
    text: str
    sandbox: str = "fake"

    @property
    def ok(self):
        return self.status == "ok"


class FakeTool:
    def __init__(self, outputs):
        self.outputs, self.calls, self.episodes, self.open = list(outputs), [], [], False

    def start(self, image=None, frames=None, setup=None):
        assert not self.open
        self.episodes.append((image, frames))
        self.open = True
        return self

    def run(self, code):
        self.calls.append(code)
        return self.outputs.pop(0)

    def close(self):
        self.open = False


def _scripted_policy(monkeypatch, script):
    """Rows draw the scripted tokens (all rows in step) while the engine computes the real model log-probs:
    the cached decode, the tool tokens and the next turn's prefill are all exercised."""
    pos = {"i": 0}
    real = rollout._draw

    def draw(logits, temperature, top_p, generator, banned=None):
        t = script[pos["i"]]
        pos["i"] += 1
        nxt = torch.full((logits.shape[0],), t, dtype=torch.long)
        lp = torch.log_softmax(logits.float(), -1).gather(1, nxt[:, None])[:, 0]
        real(logits, temperature, top_p, generator, banned)  # the real sampler still runs (shapes, no errors)
        return nxt, lp, lp

    monkeypatch.setattr(rollout, "_draw", draw)


def test_tool_rollout_logprobs_equal_teacher_forcing(monkeypatch, model, items):
    its = [items[0], items[7], items[8]]  # an image, an OCR image, text only
    turn1 = TOK.encode(call_text("print(count_components(threshold(image)))"))
    turn2 = TOK.encode("3") + [TOK.eos_id]
    assert turn1[-1] == TOK.special_tokens[DEFAULT_FORMAT.call_end]
    _scripted_policy(monkeypatch, turn1 + turn2)
    tool = FakeTool([Obs("ok", "3")] * 6)
    trajs = rollout_with_tool(model, TOK, its, tool, k=2, max_new_tokens=len(turn1) + 2,
                              generator=torch.Generator().manual_seed(0))
    assert len(tool.calls) == 6 and not tool.open
    assert tool.episodes[0][0] is not None and tool.episodes[-1] == (None, None)  # text item: no arrays
    base = [prompt_ids(it, TOK, model.media_token_counts) for it in its]
    flat = [(base[i], its[i].images, t) for i, g in enumerate(trajs) for t in g]
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, [b for b, _, _ in flat], [m for _, m, _ in flat],
                                    [t.tokens for *_, t in flat])
    for r, (_, _, t) in enumerate(flat):
        assert t.answer == "3" and t.calls == t.valid_calls == 1 and t.turns == 2 and t.statuses == ["ok"]
        assert t.finish == "stop"
        n_tool = len(t.tokens) - len(turn1) - len(turn2)
        assert t.model_mask == [1] * len(turn1) + [0] * n_tool + [1] * len(turn2) and n_tool > 2
        m = torch.tensor(t.model_mask, dtype=torch.bool)
        got, ref = torch.tensor(t.logprobs)[m], logp[r, : len(t.tokens)][m]
        assert torch.allclose(got, ref, atol=ATOL, rtol=0), (got - ref).abs().max()
        assert all(v == 0.0 for v, k in zip(t.logprobs, t.model_mask) if not k)


def test_tool_rollout_call_budget_and_invalid_calls(monkeypatch, model, items):
    call = TOK.encode(call_text("print(1)"))
    bad = TOK.encode(DEFAULT_FORMAT.call_begin + "not json" + DEFAULT_FORMAT.call_end)
    _scripted_policy(monkeypatch, bad + call)
    tool = FakeTool([])
    trajs = rollout_with_tool(model, TOK, [items[8]], tool, k=1, max_calls=1, max_new_tokens=len(call) + 1)
    t = trajs[0][0]
    assert t.statuses == ["invalid", "over_budget"] and t.calls == 2 and t.valid_calls == 0 and tool.calls == []
    assert t.answer == ""


def test_banned_tokens_are_never_drawn(model, items):
    prompts, media = _prompts(model, items[:4])
    # ban the 40 most likely first tokens of the first prompt: a real constraint on this model
    with torch.no_grad():
        logits, _ = rollout._prefill(model, TOK, prompts[:1], media[0])
    ban = logits[0].topk(40).indices.tolist()
    got = sample(model, prompts, media, k=8, max_new_tokens=6, ban=ban, generator=torch.Generator().manual_seed(0))
    drawn = {t for x in got for s in x for t in s.tokens}
    assert drawn and not drawn & set(ban) and TOK.media_pad_id not in drawn
    greedy = sample(model, prompts, media, max_new_tokens=6, temperature=0.0, ban=ban)
    assert not {t for x in greedy for s in x for t in s.tokens} & set(ban)
    for bad in ([-1], [10**9], ["a"], "ab", [True]):
        with pytest.raises(ValueError, match="ban"):
            sample(model, prompts, media, ban=bad)
