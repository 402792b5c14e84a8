"""Properties of the RL policy losses (k25mini.rl.losses) and group advantages (k25mini.rl.advantages).

Invariants checked, on random shapes, masks and log-probs:

* every registered loss is finite, with a finite gradient, for extreme (but finite) log-ratios, up to
  +-3e38 (where ``logp - old_logp`` itself overflows to +-inf in float32);
* padding (mask 0) may hold NaN / +-inf and changes neither the loss nor the gradient;
* the K2.5 loss equals an independent float64 evaluation of its formula; with zero advantages only the
  tau term ``tau * sum(m * clamp(log rho)^2) / N`` is left, and its gradient is ``2 tau log rho / N`` on kept
  tokens and 0 elsewhere;
* group advantages sum to zero within every group (float64 reference for the std-normalised variant);
* any hyperparameter value (NaN, +-inf, negative, zero, bool, None, ...) gives either a finite loss and gradient
  or a ValueError naming the hyperparameter;
* bad arguments raise ValueError naming the argument.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from k25mini.rl.advantages import group_advantages
from k25mini.rl.losses import LOG_RATIO_CLAMP, LOSSES, get_loss

# per-sequence-advantage losses need advantages [B]; the rest accept [B] too, so [B] is used throughout
NAMES = sorted(LOSSES)
EXTREME = [0.0, 1.0, -1.0, 19.9, -19.9, 20.5, -20.5, 1e4, -1e4, 1e30, -1e30, 3e38, -3e38]


@st.composite
def batches(draw, extreme: bool = True, lo: float = -30.0, hi: float = 30.0):
    """(logp, old_logp, advantages [B], mask [B, L] bool with >= 1 valid token)."""
    B = draw(st.integers(1, 4))
    L = draw(st.integers(1, 6))
    val = (st.sampled_from(EXTREME) | st.floats(lo, hi)) if extreme else st.floats(lo, hi)
    logp = [draw(st.lists(val, min_size=L, max_size=L)) for _ in range(B)]
    old = [draw(st.lists(val, min_size=L, max_size=L)) for _ in range(B)]
    mask = [draw(st.lists(st.booleans(), min_size=L, max_size=L)) for _ in range(B)]
    i, j = draw(st.integers(0, B - 1)), draw(st.integers(0, L - 1))
    mask[i][j] = True
    adv = draw(st.lists(st.floats(-10, 10), min_size=B, max_size=B))
    return (torch.tensor(logp, dtype=torch.float32), torch.tensor(old, dtype=torch.float32),
            torch.tensor(adv, dtype=torch.float32), torch.tensor(mask))


def _run(name, logp, old, adv, mask, **kw):
    leaf = logp.clone().requires_grad_(True)
    loss, stats = get_loss(name)(leaf, old, adv, mask, **kw)
    loss.backward()
    return loss.detach(), leaf.grad, stats


@given(st.sampled_from(NAMES), batches())
def test_every_loss_is_finite_for_extreme_log_ratios(name, batch):
    loss, grad, stats = _run(name, *batch)
    assert loss.ndim == 0 and torch.isfinite(loss), (name, loss)
    assert torch.isfinite(grad).all(), (name, grad)
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert stats["log_ratio_absmax"] <= LOG_RATIO_CLAMP


@given(st.sampled_from(NAMES), batches(extreme=False), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_padding_values_never_reach_loss_or_gradient(name, batch, junk):
    logp, old, adv, mask = batch
    base_loss, base_grad, _ = _run(name, logp, old, adv, mask)
    dirty_logp = torch.where(mask, logp, torch.full_like(logp, junk))
    dirty_old = torch.where(mask, old, torch.full_like(old, -junk))
    loss, grad, _ = _run(name, dirty_logp, dirty_old, adv, mask)
    torch.testing.assert_close(loss, base_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, base_grad, rtol=0, atol=0)
    assert (grad[~mask] == 0).all()


def _k25_reference(logp, old, adv, mask, alpha, beta, tau, penalty_on_masked):
    """The K2.5 formula in float64, written out element by element."""
    total, n = 0.0, int(mask.sum())
    B, L = logp.shape
    for b in range(B):
        for t in range(L):
            if not mask[b, t]:
                continue
            lr = min(max(float(logp[b, t]) - float(old[b, t]), -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP)
            rho = math.exp(lr)
            keep = alpha <= rho <= beta
            if keep:
                total += -rho * float(adv[b])
            if keep or penalty_on_masked:
                total += tau * lr * lr
    return total / n


@given(batches(), st.floats(0.05, 0.95), st.floats(1.05, 20.0), st.floats(0.0, 2.0), st.booleans())
def test_k25_loss_matches_float64_formula(batch, alpha, beta, tau, pen):
    logp, old, adv, mask = batch
    loss, _, _ = _run("kimi_k25", logp, old, adv, mask, alpha=alpha, beta=beta, tau=tau, penalty_on_masked=pen)
    ref = _k25_reference(logp, old, adv, mask, alpha, beta, tau, pen)
    assert math.isclose(float(loss), ref, rel_tol=1e-4, abs_tol=1e-4), (float(loss), ref)


@given(batches(extreme=False, lo=-3.0, hi=3.0), st.floats(1e-3, 2.0), st.booleans())
def test_k25_zero_advantages_leave_only_the_tau_term(batch, tau, pen):
    logp, old, _, mask = batch
    adv = torch.zeros(logp.shape[0])
    loss, grad, stats = _run("kimi_k25", logp, old, adv, mask, tau=tau, penalty_on_masked=pen)
    assert stats["pg_loss"] == 0.0
    lr = (logp.double() - old.double()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    rho = lr.exp()
    keep = mask & (rho >= 0.5) & (rho <= 2.0)
    counted = mask if pen else keep
    n = int(mask.sum())
    ref = float((tau * lr**2 * counted).sum() / n)
    assert math.isclose(float(loss), ref, rel_tol=1e-4, abs_tol=1e-6), (float(loss), ref)
    assert math.isclose(stats["penalty"], ref, rel_tol=1e-4, abs_tol=1e-6)
    ref_grad = (2 * tau * lr * counted / n).float()  # |lr| <= 6 < clamp: the clamp is inactive here
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


@given(st.sampled_from(NAMES), batches(extreme=False))
def test_zero_tau_zero_advantage_gives_zero_loss_for_token_losses(name, batch):
    """With A = 0 every policy-gradient term vanishes; only kimi_k25's tau term (set to 0 here) or
    kimi_k2's tau*log-ratio term could be left (kimi_k2 is checked against its own formula)."""
    logp, old, _, mask = batch
    adv = torch.zeros(logp.shape[0])
    kw = {"tau": 0.0} if name == "kimi_k25" else {}
    loss, _, _ = _run(name, logp, old, adv, mask, **kw)
    if name == "kimi_k2":
        lr = ((logp.double() - old.double()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) * mask).sum(1)
        ref = float((lr**2).sum() / logp.shape[0])
        assert math.isclose(float(loss), ref, rel_tol=1e-4, abs_tol=1e-5)
    else:
        assert float(loss) == 0.0


@given(st.integers(1, 5), st.integers(1, 5), st.data(), st.booleans())
def test_group_advantages_centre_every_group(n_groups, k, data, std_norm):
    rewards = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n_groups * k, max_size=n_groups * k))
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = group_advantages(r, k, std_normalize=std_norm)
    assert adv.shape == r.shape and torch.isfinite(adv).all()
    for g in range(n_groups):
        block = rewards[g * k : (g + 1) * k]
        mean = sum(block) / k
        centred = [x - mean for x in block]
        if std_norm and k > 1:
            std = math.sqrt(sum(c * c for c in centred) / (k - 1))
            want = [c / (std + 1e-6) for c in centred]
        elif std_norm:
            want = [0.0]
        else:
            want = centred
        got = adv[g * k : (g + 1) * k].tolist()
        assert len(got) == len(want) == k
        for a, b in zip(got, want):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), (got, want)


def _hparams(fn):
    return [n for n, prm in inspect.signature(fn).parameters.items() if prm.kind is inspect.Parameter.KEYWORD_ONLY]


HPARAM_VALUES = [math.nan, math.inf, -math.inf, -1.0, 0.0, 0, 1e-3, 0.5, 0.99, 1.0, 1.5, 3.0, 1e6, True, None, 2, 2.5]


@given(st.sampled_from(NAMES), st.data(), batches(extreme=False))
@example("kimi_k25", None, None).via("found in review: tau=NaN passed the `tau < 0` check and gave a NaN loss")
def test_any_hyperparameter_gives_a_finite_loss_or_a_named_error(name, data, batch):
    if data is None:  # the explicit example above
        kw, batch = {"tau": math.nan}, _ok()
    else:
        hp = data.draw(st.sampled_from(_hparams(get_loss(name))))
        kw = {hp: data.draw(st.sampled_from(HPARAM_VALUES))}
    try:
        loss, grad, _ = _run(name, *batch, **kw)
    except ValueError as e:
        assert any(k in str(e) for k in kw), (kw, str(e))
        return
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), (name, kw, loss)


def _ok():
    logp = torch.zeros(2, 3)
    return logp, logp.clone(), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool)


@pytest.mark.parametrize(
    "change, kw, field",
    [
        ({"logp": torch.zeros(6)}, {}, "logp"),
        ({"logp": torch.zeros(2, 3, dtype=torch.long)}, {}, "logp"),
        ({"old_logp": torch.zeros(2, 4)}, {}, "old_logp"),
        ({"mask": torch.full((2, 3), 2)}, {}, "mask"),
        ({"mask": torch.ones(3, 2)}, {}, "mask"),
        ({"advantages": torch.zeros(3)}, {}, "advantages"),
        ({}, {"alpha": 1.5}, "alpha"),
        ({}, {"beta": 0.9}, "beta"),
        ({}, {"tau": -0.1}, "tau"),
        ({}, {"num_tokens": 0}, "num_tokens"),
        ({}, {"log_ratio_clamp": 0.0}, "log_ratio_clamp"),
        ({}, {"log_ratio_clamp": math.inf}, "log_ratio_clamp"),
        ({}, {"tau": math.nan}, "tau"),
        ({}, {"num_tokens": True}, "num_tokens"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_k25_loss_bad_arguments_name_the_argument(change, kw, field):
    logp, old, adv, mask = _ok()
    args = {"logp": logp, "old_logp": old, "advantages": adv, "mask": mask, **change}
    with pytest.raises(ValueError, match=field):
        get_loss("kimi_k25")(args["logp"], args["old_logp"], args["advantages"], args["mask"], **kw)


@pytest.mark.parametrize("bad", ["nope", "", "KIMI_K25"])
def test_unknown_loss_name_lists_the_known_ones(bad):
    with pytest.raises(ValueError, match="kimi_k25"):
        get_loss(bad)
