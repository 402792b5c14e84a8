import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from k25mini import config as C

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures"


# ----------------------------------------------------------------------------- param counts
def _k2_expected() -> tuple[int, int]:
    """The K2 sum written out term by term from the published config (no shared code)."""
    V, D, L, H = 163840, 7168, 61, 64
    qr, kvr, nope, rope, vd = 1536, 512, 128, 64, 128
    E, k, Fe, Fd = 384, 8, 2048, 18432
    attn = (D * qr + qr + qr * H * (nope + rope)) + (D * (kvr + rope) + kvr + kvr * H * (nope + vd)) + H * vd * D
    per_layer_norms = 2 * D
    dense = 3 * D * Fd
    expert = 3 * D * Fe
    moe = E * D + E * expert + expert  # router + routed + 1 shared
    total = 2 * V * D + D + L * (attn + per_layer_norms) + 1 * dense + 60 * moe
    activated = total - 60 * (E - k) * expert
    return total, activated


def test_k2_counts_match_published_config():
    total, activated = _k2_expected()
    pc = C.count_params(C.k2())
    assert (pc.total, pc.activated) == (total, activated)
    assert 1.02e12 < pc.total < 1.05e12  # "1T total" (1.04T in the K2 paper)
    assert 3.1e10 < pc.activated < 3.4e10  # "32B activated"
    assert sum(pc.by_component.values()) == pc.total


def test_k25_adds_moonvit_and_projector():
    D, I, L, p = 1152, 4304, 27, 14
    block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * I + I) + (I * D + D)
    tower = 3 * p * p * D + D + 64 * 64 * D + L * block + 2 * D
    proj = 2 * D + (4 * D) ** 2 + 4 * D + 4 * D * 7168 + 7168
    k2, k25 = C.count_params(C.k2()), C.count_params(C.k25())
    assert k25.total - k2.total == tower + proj
    assert 0.35e9 < tower + proj < 0.5e9  # "~0.4B" MoonViT + projector
    assert k25.activated - k2.activated == tower + proj


def test_activated_le_total_and_textconfig_accepted():
    for name in C.PRESETS:
        pc = C.count_params(C.preset(name))
        assert 0 < pc.activated <= pc.total
    assert C.count_params(C.k2().text).total == C.count_params(C.k2()).total
    with pytest.raises(ValueError, match="config"):
        C.count_params({"hidden_size": 4})


def test_q_lora_none_and_tied_embeddings():
    t = dataclasses.replace(C.nano().text, q_lora_rank=None, tie_word_embeddings=True)
    pc = C.count_params(t)
    assert pc.by_component["lm_head"] == 0
    D, H, qk = t.hidden_size, t.num_attention_heads, t.qk_head_dim
    base = dataclasses.replace(t, q_lora_rank=8)
    diff = C.count_params(base).by_component["attention"] - pc.by_component["attention"]
    assert diff == t.num_hidden_layers * ((D * 8 + 8 + 8 * H * qk) - D * H * qk)


def test_kv_cache_mla_vs_mha():
    t = C.k2().text
    assert C.kv_cache_bytes_per_token(t, "mla") == (512 + 64) * 61 * 2
    assert C.kv_cache_bytes_per_token(t, "mha") == 64 * (192 + 128) * 61 * 2
    with pytest.raises(ValueError, match="kind"):
        C.kv_cache_bytes_per_token(t, "gqa")


# ----------------------------------------------------------------------------- HF configs
def test_from_hf_config_k2_fixture_is_k2_preset():
    assert C.from_hf_config(FIX / "kimi_k2_config.json") == C.k2()
    assert C.from_hf_config(str(FIX)) if (FIX / "config.json").exists() else True


def test_from_hf_config_k25_fixture_is_k25_preset():
    cfg = C.from_hf_config(FIX / "kimi_k25_config.json")
    assert cfg == C.k25()
    assert cfg.vision.mm_hidden_size == 4608


def test_hf_roundtrip_all_presets():
    for name in C.PRESETS:
        cfg = C.preset(name)
        back = C.from_hf_config(json.loads(json.dumps(C.to_hf_config(cfg))))
        assert back.text == cfg.text and back.vision == cfg.vision
        assert back.media_placeholder_token_id == cfg.media_placeholder_token_id


def test_model_config_dict_roundtrip():
    for name in C.PRESETS:
        cfg = C.preset(name)
        assert C.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_key_warns_not_silent():
    d = json.loads((FIX / "kimi_k2_config.json").read_text())
    d["mystery_knob"] = 3
    with pytest.warns(UserWarning, match="mystery_knob"):
        cfg = C.from_hf_config(d)
    assert cfg == C.k2()
    d2 = json.loads((FIX / "kimi_k25_config.json").read_text())
    d2["vision_config"]["foo"] = 1
    with pytest.warns(UserWarning, match="foo"):
        C.from_hf_config(d2)


def test_mtp_layers_warn():
    d = json.loads((FIX / "kimi_k2_config.json").read_text())
    d["num_nextn_predict_layers"] = 1
    with pytest.warns(UserWarning, match="num_nextn_predict_layers"):
        C.from_hf_config(d)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.update(num_key_value_heads=8), "num_key_value_heads"),
        (lambda d: d.update(hidden_act="gelu"), "hidden_act"),
        (lambda d: d.update(moe_layer_freq=2), "moe_layer_freq"),
        (lambda d: d.update(scoring_func="softmax"), "scoring_func"),
        (lambda d: d.update(num_experts_per_tok=400), "num_experts_per_tok"),
        (lambda d: d.update(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    ],
)
def test_conflicting_k2_keys_raise(mutate, field):
    d = json.loads((FIX / "kimi_k2_config.json").read_text())
    mutate(d)
    with pytest.raises(ValueError, match=field):
        C.from_hf_config(d)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d["vision_config"].update(text_hidden_size=4096), "text_hidden_size"),
        (lambda d: d["vision_config"].update(mm_hidden_size=1024), "mm_hidden_size"),
        (lambda d: d.update(hidden_size=4096), "hidden_size"),
        (lambda d: d.update(tie_word_embeddings=True), "tie_word_embeddings"),
        (lambda d: d.pop("text_config"), "text_config"),
    ],
)
def test_conflicting_k25_keys_raise(mutate, field):
    d = json.loads((FIX / "kimi_k25_config.json").read_text())
    mutate(d)
    with pytest.raises(ValueError, match=field):
        C.from_hf_config(d)


def test_from_hf_config_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path_or_dict"):
        C.from_hf_config(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="path_or_dict"):
        C.from_hf_config(42)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="path_or_dict"):
        C.from_hf_config(tmp_path)


# ----------------------------------------------------------------------------- validation
TEXT_BAD = [
    (dict(num_experts_per_tok=9, n_routed_experts=8), "num_experts_per_tok"),
    (dict(hidden_size=-64), "hidden_size"),
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(vocab_size=10.5), "vocab_size"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(first_k_dense_replace=99), "first_k_dense_replace"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor"),
    (dict(routed_scaling_factor=float("nan")), "routed_scaling_factor"),
    (dict(n_group=3), "n_group"),
    (dict(topk_group=2), "topk_group"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(aux_loss_alpha=-1.0), "aux_loss_alpha"),
    (dict(topk_method="greedy"), "topk_method"),
    (dict(rms_norm_eps=-1e-6), "rms_norm_eps"),
    (dict(num_hidden_layers=True), "num_hidden_layers"),
]


@pytest.mark.parametrize("kw,field", TEXT_BAD)
def test_text_config_rejects(kw, field):
    base = dataclasses.asdict(C.nano().text)
    base.update(kw)
    with pytest.raises(ValueError, match=field):
        C.TextConfig(**base)


VISION_BAD = [
    (dict(hidden_size=50, num_attention_heads=4), "hidden_size"),  # not divisible by heads
    (dict(hidden_size=40, num_attention_heads=4), "head_dim"),  # head_dim 10: not a multiple of 4
    (dict(patch_size=-14), "patch_size"),
    (dict(merge_kernel_size=(2,)), "merge_kernel_size"),
    (dict(merge_kernel_size=(2, 0)), "merge_kernel_size"),
    (dict(min_patches=300, max_patches=256), "min_patches"),
    (dict(merge_type="avgpool"), "merge_type"),
    (dict(layer_norm_eps=0), "layer_norm_eps"),
]


@pytest.mark.parametrize("kw,field", VISION_BAD)
def test_vision_config_rejects(kw, field):
    base = dataclasses.asdict(C.nano().vision)
    base.update(kw)
    with pytest.raises(ValueError, match=field):
        C.VisionConfig(**base)


def test_model_config_rejects():
    with pytest.raises(ValueError, match="media_placeholder_token_id"):
        C.ModelConfig(text=C.nano().text, media_placeholder_token_id=10_000)
    with pytest.raises(ValueError, match="ModelConfig.text"):
        C.ModelConfig(text={"hidden_size": 4})
    with pytest.raises(ValueError, match="ModelConfig.vision"):
        C.ModelConfig(text=C.nano().text, vision="moonvit")


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset name"):
        C.preset("k3")
    assert set(C.PRESETS) == {"nano", "small", "k2", "k25"}


def test_presets_are_fresh_objects_and_frozen():
    a, b = C.nano(), C.nano()
    assert a == b and a is not b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.text.hidden_size = 3  # type: ignore[misc]


def test_no_warnings_on_clean_fixtures():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.from_hf_config(FIX / "kimi_k2_config.json")
        C.from_hf_config(FIX / "kimi_k25_config.json")
