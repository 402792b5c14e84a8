"""k25mini.rl.step: completion log-probs, batch packing, and the generic policy update (MoE bias hook included)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from k25mini.config import nano
from k25mini.model import K2ForCausalLM
from k25mini.model.moe import MoELayer, update_moe_biases
from k25mini.optim import build_optimizer
from k25mini.rl import CompletionBatch, completion_logp, get_loss, pack_completions, pad_completions, policy_update

HP = dict(alpha=0.5, beta=2.0, tau=0.01)


def _lm(seed: int = 0) -> K2ForCausalLM:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(nano().text, num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                              moe_intermediate_size=16, q_lora_rank=16, kv_lora_rank=16, max_position_embeddings=64,
                              bias_update_rate=0.01)
    return K2ForCausalLM(cfg)


def _bias(m: torch.nn.Module) -> torch.Tensor:
    return next(x for x in m.modules() if isinstance(x, MoELayer)).router.e_score_correction_bias.clone()


def _seqs() -> list[tuple[list[int], list[int], list[float], float]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i, (lp, lc) in enumerate([(5, 4), (3, 6), (7, 2), (4, 4)]):
        p = torch.randint(1, 64, (lp,), generator=g).tolist()
        c = torch.randint(1, 64, (lc,), generator=g).tolist()
        out.append((p, c, (-2.0 - 0.1 * torch.rand(lc, generator=g)).tolist(), 1.0 if i % 2 else -1.0))
    return out


def test_completion_logp_matches_a_direct_computation():
    m = _lm().eval()
    ids, comp = pad_completions([([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert comp.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    with torch.no_grad():
        lp = completion_logp(m, ids, comp)
        logits = m(ids).float()
    for b in range(2):
        for t in range(ids.shape[1]):
            want = torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]] if comp[b, t] else torch.tensor(0.0)
            torch.testing.assert_close(lp[b, t], want)
    with pytest.raises(ValueError, match="mask must be"):
        completion_logp(m, ids, comp.long())
    with pytest.raises(ValueError, match="ids must be"):
        completion_logp(m, ids.float(), comp)


def test_pack_completions_places_old_logp_and_advantages():
    seqs = _seqs()
    b = pack_completions(seqs, pad_id=0)
    assert isinstance(b, CompletionBatch) and b.ids.shape == (4, 9) and b.advantages.tolist() == [-1.0, 1.0, -1.0, 1.0]
    for i, (p, c, lp, _) in enumerate(seqs):
        assert b.old_logp[i, len(p) : len(p) + len(c)].tolist() == pytest.approx(lp)
        assert int(b.mask[i].sum()) == len(c) and float(b.old_logp[i][~b.mask[i]].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="old log-probs"):
        pack_completions([([1], [2, 3], [0.0], 1.0)], pad_id=0)
    with pytest.raises(ValueError, match="non-empty"):
        pack_completions([], pad_id=0)


def test_policy_update_equals_the_explicit_loop_with_the_bias_update():
    batch = pack_completions(_seqs(), pad_id=0)
    new = _lm()
    opt = torch.optim.AdamW(new.parameters(), lr=1e-2, weight_decay=0.0)  # a raw optimiser: the hook is attached
    stats = policy_update(new, opt, batch, loss="kimi_k25", updates=3, grad_clip=1.0, **HP)
    assert opt.moe_bias_update is not None and opt.moe_bias_update.calls == 3
    policy_update(new, opt, batch, loss="kimi_k25", updates=1, **HP)  # attaching again does nothing
    assert len(opt._optimizer_step_post_hooks) == 1

    old = _lm()
    ref = torch.optim.AdamW(old.parameters(), lr=1e-2, weight_decay=0.0)
    old.train()
    for _ in range(4):
        logp = completion_logp(old, batch.ids, batch.mask)
        loss, ref_stats = get_loss("kimi_k25")(logp, batch.old_logp, batch.advantages, batch.mask, **HP)
        ref.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(old.parameters(), 1.0)
        ref.step()
        update_moe_biases(old)
    assert set(stats) >= {"loss", "masked_frac"}
    assert new.state_dict().keys() == old.state_dict().keys()
    for (k, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert torch.count_nonzero(_bias(new)) > 0


def test_policy_update_rejects_bad_arguments():
    m = _lm()
    opt = build_optimizer(m, kind="adamw", lr=1e-3)
    batch = pack_completions(_seqs(), pad_id=0)
    with pytest.raises(ValueError, match="updates"):
        policy_update(m, opt, batch, updates=0)
    with pytest.raises(ValueError, match="grad_clip"):
        policy_update(m, opt, batch, grad_clip=0.0)
    with pytest.raises(ValueError, match="CompletionBatch"):
        policy_update(m, opt, (batch.ids, batch.mask))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown loss"):
        policy_update(m, opt, batch, loss="nope")
