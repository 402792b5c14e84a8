"""One RL iteration of the VLM (k25mini.rl.iteration): its gradient equals a per-sample policy-gradient reference,
it learns a dense toy reward, Toggle's shaping and the tool path plug in, bad arguments name themselves."""

from __future__ import annotations

import copy

import pytest
import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import prompt_ids
from k25mini.rl.iteration import answer_text, rl_iteration
from k25mini.rl.rollout import sample
from k25mini.rl.toggle import Toggle
from k25mini.world import World, make_eval_suite
from tests.rl.printable import printable_model

TOK = Tokenizer()


@pytest.fixture(scope="module")
def items():
    w = World(0, scale="smoke")
    return make_eval_suite(w, "VisReason", 2) + make_eval_suite(w, "TextKnow", 2)


def _model(seed=0):
    return printable_model(seed)


def _low_first_char(item, text):
    """A dense toy reward: 1 if the answer's first character sorts before 'P' (about half of printable ASCII)."""
    return float(bool(text) and text[0] < "P")


class Recorder(torch.optim.Optimizer):
    """Keeps a copy of the gradients it is asked to apply (and applies nothing)."""

    def __init__(self, params):
        super().__init__(params, {})
        self.grads = None

    def step(self, closure=None):
        self.grads = [None if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]]


def test_gradient_equals_a_per_sample_reference(items):
    """At the first update rho = 1, so the K2.5 loss's gradient is -(1/N) sum_j A_j sum_i grad log pi(y_ji):
    recomputed one sample at a time, with no padding, from the same samples."""
    m = _model()
    ref_model = copy.deepcopy(m)  # the optimiser's MoE bias hook moves m's router biases after the step
    k = 4
    opt = Recorder(m.parameters())
    rl_iteration(m, opt, items, k=k, reward_fn=_low_first_char, grad_clip=None, max_new_tokens=6,
                 generator=torch.Generator().manual_seed(3), loss_kwargs=dict(tau=0.01))
    got = opt.grads
    # the reference: same samples (same generator seed, same weights), one forward per sample
    m = ref_model
    prompts = [prompt_ids(it, TOK, m.media_token_counts) for it in items]
    groups = sample(m, prompts, [it.images for it in items], k=k, max_new_tokens=6,
                    generator=torch.Generator().manual_seed(3))
    m.zero_grad(set_to_none=True)
    m.train()
    n_tok = sum(len(s.tokens) for g in groups for s in g)
    total = 0.0
    for it, p, g in zip(items, prompts, groups):
        r = torch.tensor([_low_first_char(it, answer_text(TOK, s.tokens)) for s in g])
        adv = r - r.mean()
        for s, a in zip(g, adv.tolist()):
            ids = torch.tensor([p + s.tokens])
            logits = m.language_model(inputs_embeds=m.embed(ids, it.images or None))
            lp = torch.log_softmax(logits[0, len(p) - 1 : -1].float(), -1).gather(1, torch.tensor(s.tokens)[:, None])
            total = total + (-a * lp.sum())
    assert any(float(x.abs().sum()) > 0 for x in [total.detach()])
    (total / n_tok).backward()
    ref = [None if q.grad is None else q.grad for q in m.parameters()]
    n_checked = 0
    for name, a, b in zip([n for n, _ in m.named_parameters()], got, ref):
        if b is None or float(b.abs().max()) == 0:
            continue
        assert a is not None
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), (name, (a - b).abs().max())
        n_checked += 1
    assert n_checked > 10


def test_learns_a_dense_toy_reward(items):
    m = _model(1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    hist = [rl_iteration(m, opt, items, k=8, reward_fn=_low_first_char, max_new_tokens=3, generator=g)
            for _ in range(12)]
    first, last = hist[0]["reward"], sum(h["reward"] for h in hist[-3:]) / 3
    assert 0.15 < first < 0.85 and last > first + 0.25, [round(h["reward"], 2) for h in hist]
    assert m.training
    for h in hist:
        assert set(h) >= {"reward", "shaped_reward", "response_tokens", "zero_std_frac", "loss", "grad_norm",
                          "masked_frac"}


def test_toggle_shaping_is_applied(items):
    m = _model(2)
    tg = Toggle({it.meta.get("skill"): 0 for it in items}, lam=0.0, mode="always")  # nothing fits a 0 budget
    st = rl_iteration(m, torch.optim.SGD(m.parameters(), lr=0.0), items, k=2, reward_fn=lambda it, t: 1.0,
                      shape=lambda key, r, n: tg.shape(0, key, r, n), max_new_tokens=3,
                      generator=torch.Generator().manual_seed(0))
    assert st["reward"] == 1.0 and st["shaped_reward"] == 0.0 and st["zero_std_frac"] == 1.0
    with pytest.raises(ValueError, match="shape must return"):
        rl_iteration(m, torch.optim.SGD(m.parameters(), lr=0.0), items, k=2, shape=lambda key, r, n: [1.0],
                     max_new_tokens=2)


@pytest.mark.parametrize("bad,match", [(dict(items=[]), "items"), (dict(updates=0), "updates"),
                                       (dict(grad_clip=0), "grad_clip"), (dict(loss="nope"), "nope"),
                                       (dict(k=0), "k must")])
def test_bad_arguments(items, bad, match):
    m = _model()
    kw = dict(items=items, k=2, max_new_tokens=2)
    kw.update(bad)
    its = kw.pop("items")
    with pytest.raises((ValueError, KeyError), match=match):
        rl_iteration(m, torch.optim.SGD(m.parameters(), lr=0.0), its, **kw)


def test_a_separate_sampler_gives_pi_old_and_the_first_update_sees_the_mismatch(items):
    import copy as _copy

    m = _model(4)
    same = rl_iteration(m, torch.optim.SGD(m.parameters(), lr=0.0), items, k=2, max_new_tokens=4,
                        generator=torch.Generator().manual_seed(0), sampler=_copy.deepcopy(m))
    assert same["first_log_ratio_absmax"] < 1e-4  # an identical sampler: no mismatch (fp noise only)
    noisy = _copy.deepcopy(m)
    with torch.no_grad():
        for p in noisy.language_model.parameters():
            if p.numel() > 1:
                p.add_(0.05 * p.std() * torch.randn_like(p))
    st = rl_iteration(m, torch.optim.SGD(m.parameters(), lr=0.0), items, k=2, max_new_tokens=4,
                      generator=torch.Generator().manual_seed(0), sampler=noisy)
    assert st["first_log_ratio_std"] > 0.01 and st["first_log_ratio_absmax"] > 0.05
    assert st["first_grad_norm"] > 0
    with torch.no_grad():  # the sampler's weights were used for sampling, not changed
        assert any(not torch.equal(a, b) for a, b in zip(noisy.parameters(), m.parameters()))
