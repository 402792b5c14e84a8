"""Weight interop with transformers' DeepseekV3 (test-only dependency) and the sharded safetensors layout.

Parity: a tiny ``DeepseekV3ForCausalLM`` with random weights (non-zero router correction bias, grouped top-k,
random norm weights) is converted with ``from_hf_config(config.to_dict())`` + ``load_published`` and the float32
logits must agree within 1e-5 relative to the logit scale (``max|diff| <= 1e-5 * max(1, max|logit|)``; logits here
reach ~5 and the measured error is 0.6-1.3e-5 absolute, <= 2.5e-6 relative: float32 rounding of two different
operation orders over 3 layers), with and without YaRN, with ``rope_interleave`` true and false.
Round trips k25mini -> published -> k25mini must be bit-exact (``torch.equal``).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from k25mini import interop
from k25mini.config import ModelConfig, TextConfig, VisionConfig, from_hf_config, nano, to_hf_config
from k25mini.model.decoder import K2ForCausalLM
from k25mini.multimodal import K25ForConditionalGeneration

# dev dependency (pyproject [dev]): skip only when it is not installed at all; an installed transformers whose import
# breaks (e.g. against this torch) is a failure, not a skip
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError,
                                   reason="transformers is not installed (pip install -e '.[dev]')")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

TOL = 1e-5
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}


def _hf_config(rope_interleave=True, yarn=None, q_lora_rank=16, rms_norm_eps=1e-6, theta=500.0):
    rp = {"rope_type": "default", "rope_theta": theta} if yarn is None else {**yarn, "rope_theta": theta}
    return DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora_rank, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5, n_group=2, topk_group=1,
        norm_topk_prob=True, max_position_embeddings=128, rms_norm_eps=rms_norm_eps, rope_parameters=rp,
        rope_interleave=rope_interleave, num_mtp_layers=0, tie_word_embeddings=False,
    )


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """O(1) activations: weights ~ N(0, 1/fan_in), norm weights around 1, router bias ~ U(-0.3, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.6 * torch.rand(b.shape, generator=g) - 0.3)


def _pair(hf_cfg):
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(hf_cfg).eval()
    _randomise(hf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key of a v5 to_dict() is understood (no "unknown key" warning)
        cfg = from_hf_config(json.loads(json.dumps(hf_cfg.to_dict())))
    ours = K2ForCausalLM(cfg.text).eval()
    interop.load_published(ours, hf.state_dict(), cfg.text, rope_interleave=hf_cfg.rope_interleave)
    return hf, ours


def _logits_diff(hf, ours, S=96):
    ids = torch.randint(0, 64, (2, S), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = ours(ids)
    scale = ref.abs().max().item()
    assert scale > 0.5  # O(1) logits: the tolerance is meaningful
    return (got - ref).abs().max().item() / max(1.0, scale)


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("yarn", [None, YARN], ids=["rope", "yarn"])
def test_logits_parity_with_transformers(interleave, yarn):
    hf, ours = _pair(_hf_config(rope_interleave=interleave, yarn=yarn))
    assert _logits_diff(hf, ours) < TOL  # S=96 > original_max_position_embeddings=32 under YaRN
    if yarn is not None:
        assert ours.config.rope_scaling["factor"] == 4.0 and ours.config.rope_theta == 500.0


def test_parity_needs_the_rope_permutation_and_the_bias():
    """The checks can fail: wrong rope layout or a dropped correction bias break parity."""
    hf, ours = _pair(_hf_config(rope_interleave=True))
    wrong = K2ForCausalLM(ours.config).eval()
    interop.load_published(wrong, hf.state_dict(), rope_interleave=False)  # treat interleaved rows as halves
    assert _logits_diff(hf, wrong) > 1e-2
    for m in ours.moe_layers():
        m.router.e_score_correction_bias.zero_()
    assert _logits_diff(hf, ours) > 1e-2


def test_parity_without_q_lora_and_absorbed_decode():
    hf, ours = _pair(_hf_config(q_lora_rank=None, yarn=YARN))
    assert _logits_diff(hf, ours) < TOL
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits[:, -1]
        cache = ours.new_kv_cache()
        ours(ids[:, :-1], kv_cache=cache)
        got = ours(ids[:, -1:], kv_cache=cache, absorb=True)[:, -1]
    assert (got - ref).abs().max().item() < TOL


def test_latent_norm_eps_decision():
    """rms_norm_eps != 1e-6: from_hf_config warns; set_latent_norm_eps gives transformers' arithmetic."""
    hf_cfg = _hf_config(rms_norm_eps=1e-2)  # large eps so the difference is visible
    hf = DeepseekV3ForCausalLM(hf_cfg).eval()
    _randomise(hf)
    with pytest.warns(UserWarning, match="q_a_layernorm and kv_a_layernorm"):
        cfg = from_hf_config(hf_cfg.to_dict())
    ours = interop.load_published(K2ForCausalLM(cfg.text).eval(), hf.state_dict())
    assert _logits_diff(hf, ours) > 1e-4
    assert interop.set_latent_norm_eps(ours) == 2 * 3
    assert _logits_diff(hf, ours) < TOL


@pytest.mark.parametrize("case", ["mscale_only", "mscale_all_dim_only", "no_original_max"])
def test_yarn_edge_cases_follow_transformers(case):
    yarn = dict(YARN)
    if case == "mscale_only":
        yarn.update(mscale=0.7)
        del yarn["mscale_all_dim"]
    elif case == "mscale_all_dim_only":
        yarn.update(mscale_all_dim=0.8)
        del yarn["mscale"]
    else:
        del yarn["original_max_position_embeddings"]
    hf_cfg = _hf_config(yarn=yarn)
    hf = DeepseekV3ForCausalLM(hf_cfg).eval()
    _randomise(hf)
    d = hf_cfg.to_dict()
    if case == "no_original_max":  # transformers fills it in on construction; give it the raw dict as a file would
        d["rope_parameters"].pop("original_max_position_embeddings")
    with pytest.warns(UserWarning, match="YaRN edge case"):
        cfg = from_hf_config(d)
    ours = interop.load_published(K2ForCausalLM(cfg.text).eval(), hf.state_dict())
    assert _logits_diff(hf, ours) < TOL


def test_to_hf_config_is_read_identically_by_transformers():
    """k25mini config -> to_hf_config (legacy rope_scaling keys, rope_interleave) -> transformers: same logits,
    including a YaRN dict that leaves mscale_all_dim to k25mini's default (written as attention_factor)."""
    text = TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                      num_hidden_layers=2, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16,
                      qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=8, num_experts_per_tok=2,
                      n_group=2, topk_group=1, routed_scaling_factor=2.5, rope_theta=500.0,
                      max_position_embeddings=128, rope_scaling={"type": "yarn", "factor": 4.0, "mscale": 0.9})
    ours = K2ForCausalLM(text).eval()
    _randomise(ours)
    for interleave in (True, False):
        d = to_hf_config(ModelConfig(text=text), rope_interleave=interleave)
        assert d["rope_interleave"] is interleave
        hf_cfg = DeepseekV3Config(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
        hf = DeepseekV3ForCausalLM(hf_cfg).eval()
        pub = interop.to_published(ours, text, rope_interleave=interleave, expert_layout="fused")
        missing, unexpected = hf.load_state_dict(pub, strict=False)
        assert not unexpected and not missing
        assert _logits_diff(hf, ours) < TOL


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("layout", interop.EXPERT_LAYOUTS)
@pytest.mark.parametrize("interleave", [True, False])
def test_round_trip_is_exact(layout, interleave):
    cfg = nano()  # K2.5: vision tower + projector + text backbone
    model = K25ForConditionalGeneration(cfg)
    _randomise(model, seed=3)
    sd = model.state_dict()
    pub = interop.to_published(model, cfg, rope_interleave=interleave, expert_layout=layout)
    assert "mm_projector.proj.0.weight" in pub and "language_model.model.layers.1.mlp.gate.weight" in pub
    assert "language_model.model.layers.1.mlp.gate.e_score_correction_bias" in pub
    assert "language_model.model.layers.0.self_attn.q_a_layernorm.weight" in pub
    if layout == "per_expert":
        assert pub["language_model.model.layers.1.mlp.experts.7.down_proj.weight"].shape == (64, 48)
    back = interop.from_published(pub, cfg, rope_interleave=interleave)
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # text only (K2 / DeepSeek-V3 flat names)
    lm = model.language_model
    flat = interop.to_published(lm, cfg.text, rope_interleave=interleave, expert_layout=layout)
    assert "model.layers.1.self_attn.kv_a_proj_with_mqa.weight" in flat
    back = interop.from_published(flat, cfg.text, rope_interleave=interleave)
    assert all(torch.equal(back[k], v) for k, v in lm.state_dict().items())


def test_interleave_permutation_is_the_even_odd_split():
    perm = interop.rope_permutation(8)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    t = nano().text
    w = torch.arange(t.kv_lora_rank + t.qk_rope_head_dim, dtype=torch.float32)[:, None]
    sd = K2ForCausalLM(t).state_dict()
    sd["model.layers.0.self_attn.kv_a_proj.weight"] = w.expand(-1, t.hidden_size).clone()
    pub = interop.to_published(sd, t)
    rows = pub["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"][:, 0]
    # published (interleaved) row perm[j] holds k25mini row kv_lora + j
    assert rows[t.kv_lora_rank + perm].tolist() == w[t.kv_lora_rank :, 0].tolist()


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_weights_raise_clear_errors():
    t = nano().text
    pub = interop.to_published(K2ForCausalLM(t), t)
    bad = dict(pub)
    del bad["model.layers.2.mlp.gate.e_score_correction_bias"]
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.2\.mlp\.gate\.e_score_correction_bias"):
        interop.from_published(bad, t)
    bad = dict(pub)
    del bad["model.layers.3.mlp.experts.5.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.3\.mlp\.experts\.5\.up_proj\.weight"):
        interop.from_published(bad, t)
    bad = dict(pub, **{"model.layers.1.self_attn.q_a_proj.weight_scale_inv": torch.ones(1)})
    with pytest.raises(ValueError, match=r"unexpected tensor names \(quantized.*weight_scale_inv"):
        interop.from_published(bad, t)
    bad = dict(pub, **{"model.layers.0.self_attn.o_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.self_attn\.o_proj\.weight has shape \(3, 3\)"):
        interop.from_published(bad, t)
    bad = dict(pub, **{"model.layers.1.mlp.experts.0.gate_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"wrong shape.*experts\.0\.gate_proj\.weight \(2, 2\)"):
        interop.from_published(bad, t)
    with pytest.raises(ValueError, match="expert_layout must be one of"):
        interop.to_published(K2ForCausalLM(t), t, expert_layout="sideways")
    mtp = dict(pub, **{f"model.layers.{t.num_hidden_layers}.eh_proj.weight": torch.zeros(1)})
    with pytest.warns(UserWarning, match="multi-token prediction"):
        interop.from_published(mtp, t)
    with pytest.raises(ValueError, match=r"unexpected tensor names: model\.layers\.4\.eh_proj"):
        interop.from_published(mtp, t, drop_mtp=False)


def test_config_rope_parameters_and_interleave():
    d = _hf_config(yarn=YARN, rope_interleave=False, theta=1234.0).to_dict()
    cfg = from_hf_config(d)
    assert cfg.text.rope_theta == 1234.0 and cfg.text.rope_scaling["original_max_position_embeddings"] == 32
    from k25mini.config import hf_rope_interleave

    assert hf_rope_interleave(d) is False and hf_rope_interleave({}) is True
    d2 = dict(d, rope_theta=99.0)
    with pytest.raises(ValueError, match="rope_theta=99.0 conflicts"):
        from_hf_config(d2)
    with pytest.raises(ValueError, match="rope_interleave must be true or false"):
        from_hf_config(dict(d, rope_interleave="yes"))
    with pytest.raises(ValueError, match="not supported"):
        from_hf_config(dict(d, rope_parameters={**d["rope_parameters"], "truncate": False}))


def test_vision_layer_norm_eps_matches_published_tower():
    # the published MoonViT blocks and final norm are nn.LayerNorm(hidden): PyTorch's default eps
    assert VisionConfig().layer_norm_eps == torch.nn.LayerNorm(4).eps == 1e-5
    assert nano().vision.layer_norm_eps == 1e-5


# ------------------------------------------------------------------------------------------------ safetensors
def test_sharded_save_load_and_transformers_reads_it(tmp_path):
    hf_cfg = _hf_config(yarn=YARN)
    hf, ours = _pair(hf_cfg)
    out = interop.save_pretrained(ours, tmp_path / "ckpt", ModelConfig(text=ours.config), max_shard_bytes=20_000)
    index = json.loads((out / interop.INDEX_NAME).read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"].values()) == set(shards)
    assert "model.layers.2.mlp.experts.3.gate_proj.weight" in index["weight_map"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    back = interop.load_pretrained(out).eval()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())
    # an inference engine reading the layout: transformers' from_pretrained on the same folder
    served = DeepseekV3ForCausalLM.from_pretrained(out).eval()
    assert _logits_diff(served, ours) < TOL


def test_k25_sharded_round_trip(tmp_path):
    cfg = nano()
    model = K25ForConditionalGeneration(cfg)
    _randomise(model, seed=4)
    out = interop.save_pretrained(model, tmp_path / "k25", max_shard_bytes=50_000)
    assert json.loads((out / "config.json").read_text())["text_config"]["rope_interleave"] is True
    back = interop.load_pretrained(out)
    assert isinstance(back, K25ForConditionalGeneration)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_save_never_corrupts_an_existing_checkpoint(tmp_path, monkeypatch):
    t = nano().text
    a, b = K2ForCausalLM(t), K2ForCausalLM(t)
    _randomise(b, seed=9)
    target = interop.save_pretrained(a, tmp_path / "ckpt", max_shard_bytes=100_000)
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        interop.save_pretrained(b, target)
    real = interop._write_shards

    def half_then_crash(sd, folder, max_bytes, meta):
        real(dict(list(sd.items())[:3]), folder, max_bytes, meta)
        raise OSError("disk full")

    monkeypatch.setattr(interop, "_write_shards", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        interop.save_pretrained(b, target, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    still = interop.load_pretrained(target)
    assert all(torch.equal(still.state_dict()[k], v) for k, v in a.state_dict().items())
    interop.save_pretrained(b, target, overwrite=True)
    new = interop.load_pretrained(target)
    assert all(torch.equal(new.state_dict()[k], v) for k, v in b.state_dict().items())


def test_load_sharded_checks_the_index(tmp_path):
    sd = {"a": torch.ones(3), "b": torch.zeros(2, 2)}
    out = interop.save_sharded(sd, tmp_path / "s", max_shard_bytes=8)
    assert {k: v.tolist() for k, v in interop.load_sharded(out).items()} == {k: v.tolist() for k, v in sd.items()}
    idx = json.loads((out / interop.INDEX_NAME).read_text())
    idx["weight_map"]["c"] = "model-00009-of-00009.safetensors"
    (out / interop.INDEX_NAME).write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="shard files missing.*model-00009-of-00009"):
        interop.load_sharded(out)
    idx["weight_map"].pop("c")
    idx["weight_map"]["a"], idx["weight_map"]["b"] = idx["weight_map"]["b"], idx["weight_map"]["a"]
    (out / interop.INDEX_NAME).write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="tensor a is in model-00001-of-00002.safetensors but the index says"):
        interop.load_sharded(out)
    with pytest.raises(ValueError, match="max_shard_bytes must be an int > 0"):
        interop.save_sharded(sd, tmp_path / "t", max_shard_bytes=0)
