"""Config validation boundary (k25mini.config), property-based.

Random perturbations of one field of a valid preset (ints to 0, negative, huge, bool, float, text; floats to 0,
negative, NaN, inf; strings to junk; bools to non-bools; the merge kernel to malformed tuples; the YaRN dict to
malformed dicts) must give one of two outcomes, never a third:

* a ValueError whose message names the perturbed field, raised by the config or, at the latest, by the model
  constructor; or
* a valid config holding a value of the field's declared kind (no bool, str or float taken silently for another
  kind): ``count_params`` is positive and consistent, the config survives ``to_dict``/``from_dict`` unchanged and
  ``to_hf_config``/``from_hf_config`` with the same model (a YaRN dict is compared by the frequencies and scales it
  gives), and the model built from it has exactly ``count_params`` parameters and runs a tiny forward (text plus
  one image) to finite logits of the right shape. Models of more than 3e7 elements are built on the meta device
  (parameter count only); more than 2**41 elements or 64 layers: counted only.

A deterministic sweep runs every single-field perturbation of every preset (all of them under the thorough
profile, every 25th under ci). Bad-input cases list perturbations that used to be accepted silently, or failed
later with an error that did not name the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_settings import examples

from k25mini import config as C
from k25mini.model import K2ForCausalLM
from k25mini.model.rope import rope_inv_freq, softmax_scale
from k25mini.multimodal import K25ForConditionalGeneration

TEXT_FIELDS = [f.name for f in dataclasses.fields(C.TextConfig)]
VISION_FIELDS = [f.name for f in dataclasses.fields(C.VisionConfig)]
TOP_FIELDS = ["media_placeholder_token_id", "name"]
BUILD_LIMIT = 3e7  # elements: above this the model is built on the meta device only (parameter count)
META_LIMIT = 2**41  # elements: above this (or past 64 layers) a valid config is only counted, not built


def _variants(v):
    """Perturbations of a field value: bad ones and nearby valid ones."""
    junk = ["junk", "", None, [], {}, "8"]
    if isinstance(v, bool):
        return [not v, 0, 1, 2, "yes", "False", 1.0, None]
    if isinstance(v, int):
        return [0, -1, -v, v + 1, max(v - 1, 0), 2 * v, max(v // 2, 1), 1, 2, 2**31, 2**62, True, False,
                float(v), v + 0.5, math.nan, math.inf, *junk]
    if isinstance(v, float):
        return [0.0, -0.0, -v, 2 * v, v / 2, 1e-300, 1e300, math.nan, math.inf, -math.inf, True, 1, "1.0", *junk]
    if isinstance(v, str):
        return ["junk", "", v.upper(), v + " ", 3, None]
    if isinstance(v, tuple):
        return [(1, 1), (3, 3), (2, 4), (2,), (2, 2, 2), (0, 2), (-2, 2), [2, 2], (2.0, 2.0), (True, True), None, "22"]
    if isinstance(v, dict) or v is None:  # rope_scaling (None in nano/small) / q_lora_rank None
        return [None, {}, {"type": "yarn"}, {"type": "yarn", "factor": 4.0}, {"type": "yarn", "factor": 0.5},
                {"type": "yarn", "factor": True}, {"type": "yarn", "factor": math.nan},
                {"type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 2.0,
                                                    "original_max_position_embeddings": 0}, "yarn", 4, 0, -1, 16]
    raise AssertionError(f"no perturbations for {v!r}")


@st.composite
def perturbation(draw, presets=("nano", "small")):
    base = C.preset(draw(st.sampled_from(presets)))
    where = draw(st.sampled_from(["text", "vision", "top"]))
    if where == "vision" and base.vision is None:
        where = "text"
    names = {"text": TEXT_FIELDS, "vision": VISION_FIELDS, "top": TOP_FIELDS}[where]
    name = draw(st.sampled_from(names))
    old = getattr(base.text if where == "text" else base.vision if where == "vision" else base, name)
    return base, where, name, draw(st.sampled_from(_variants(old)))


def _apply(base, where, name, value):
    if where == "text":
        return base.replace(text=dataclasses.replace(base.text, **{name: value}))
    if where == "vision":
        return base.replace(vision=dataclasses.replace(base.vision, **{name: value}))
    return base.replace(**{name: value})


def _named(err: ValueError, name: str) -> bool:
    return name in str(err)


def _tiny_forward(cfg: C.ModelConfig) -> None:
    torch.manual_seed(0)
    V = cfg.text.vocab_size
    if cfg.vision is None:
        model = K2ForCausalLM(cfg.text).eval()
        ids = torch.arange(6).remainder(V)[None]
        with torch.no_grad():
            logits = model(ids)
    else:
        model = K25ForConditionalGeneration(cfg).eval()  # refuses a vision config without a placeholder id
        img = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
        pad = cfg.media_placeholder_token_id
        text = [t for t in range(min(V, 256)) if t != pad][:4]
        ids = torch.tensor([text[:2] + [pad] * sum(model.media_token_counts(img)) + text[2:]])
        with torch.no_grad():
            logits = model(ids, media=[img])
    assert sum(p.numel() for p in model.parameters()) == C.count_params(cfg).total, "parameter count"
    assert logits.shape == (*ids.shape, V), f"logits shape {tuple(logits.shape)}"
    assert bool(torch.isfinite(logits).all()), "non-finite logits"


def _meta_build(cfg: C.ModelConfig) -> None:
    with torch.device("meta"):
        model = K2ForCausalLM(cfg.text) if cfg.vision is None else K25ForConditionalGeneration(cfg)
    assert sum(p.numel() for p in model.parameters()) == C.count_params(cfg).total, "parameter count (meta)"


def _rope_semantics(t: C.TextConfig):
    """What the model computes from the RoPE settings: inverse frequencies, cos/sin multiplier, softmax scale."""
    dim = t.qk_rope_head_dim if t.qk_rope_head_dim <= 256 else 64  # a perturbed 2**31 would be a huge table
    inv, mul = rope_inv_freq(dim, t.rope_theta, t.rope_scaling, t.max_position_embeddings)
    return inv, float(mul), softmax_scale(t.qk_head_dim, t.rope_scaling, t.max_position_embeddings)


def _same_model_after_hf(cfg: C.ModelConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. rms_norm_eps != 1e-6 warns about transformers' latent-norm eps
        back = C.from_hf_config(C.to_hf_config(cfg))
    assert back.vision == cfg.vision, "vision config changed through config.json"
    # the YaRN dict is written with every key explicit: compare what it computes, and everything else exactly
    assert dataclasses.replace(back.text, rope_scaling=None) == dataclasses.replace(cfg.text, rope_scaling=None)
    if cfg.text.rope_scaling is None:
        assert back.text.rope_scaling is None
    else:
        (i1, m1, s1), (i2, m2, s2) = _rope_semantics(back.text), _rope_semantics(cfg.text)
        torch.testing.assert_close(i1, i2, rtol=1e-6, atol=0)  # float32 tables
        assert math.isclose(m1, m2, rel_tol=1e-9) and math.isclose(s1, s2, rel_tol=1e-9), "YaRN scales changed"


def _same_kind(old, new) -> bool:
    """A value the config accepted has the kind the preset's value has (no silent bool/str/float coercion)."""
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, int) or old is None:  # q_lora_rank / media_placeholder_token_id may be None
        return new is None or (isinstance(new, int) and not isinstance(new, bool)) or isinstance(new, dict)
    if isinstance(old, float):
        return not isinstance(new, bool) and isinstance(new, (int, float)) and math.isfinite(new)
    if isinstance(old, str):
        return isinstance(new, str)
    if isinstance(old, tuple):
        return isinstance(new, tuple) and all(isinstance(k, int) and not isinstance(k, bool) for k in new)
    return isinstance(new, dict) or new is None


def _elements(cfg: C.ModelConfig) -> int:
    """Parameters plus the one buffer whose size a field sets (the vision tower's temporal sin-cos table)."""
    n = C.count_params(cfg).total
    return n + (cfg.vision.init_pos_emb_time * cfg.vision.hidden_size if cfg.vision is not None else 0)


def _check_valid(cfg: C.ModelConfig, build: bool) -> None:
    pc = C.count_params(cfg)
    assert 0 < pc.activated <= pc.total == sum(pc.by_component.values()), "count_params"
    assert C.ModelConfig.from_dict(cfg.to_dict()) == cfg, "to_dict/from_dict"
    _same_model_after_hf(cfg)
    if not build:
        return
    n = _elements(cfg)
    shallow = cfg.text.num_hidden_layers <= 64 and (cfg.vision is None or cfg.vision.num_hidden_layers <= 64)
    if n <= BUILD_LIMIT:
        _tiny_forward(cfg)
    elif n <= META_LIMIT and shallow and cfg.text.n_routed_experts <= 4096:
        _meta_build(cfg)


def _outcome(base, where, name, value, build: bool) -> None:
    try:
        cfg = _apply(base, where, name, value)
    except ValueError as e:
        assert _named(e, name), f"{where}.{name}={value!r}: {e}"
        return
    old = getattr(base.text if where == "text" else base.vision if where == "vision" else base, name)
    assert _same_kind(old, value), f"{where}.{name}={value!r} accepted in place of {old!r}"
    try:
        _check_valid(cfg, build)
    except ValueError as e:  # the model constructor (or the forward's preprocessing) may refuse, naming the field
        assert _named(e, name), f"{where}.{name}={value!r} passed the config, then: {e}"
    except AssertionError as e:
        raise AssertionError(f"{where}.{name}={value!r}: {e}") from None


@examples(1.0)
@given(perturbation())
def test_perturbed_small_presets_build_and_run_or_name_the_field(case):
    _outcome(*case, build=True)


@given(perturbation(presets=("k2", "k25")))
def test_perturbed_published_presets_validate_or_name_the_field(case):
    _outcome(*case, build=False)


@given(perturbation(), perturbation())
def test_two_perturbations_at_once_name_one_of_the_fields(a, b):
    base, w1, n1, v1 = a
    _, w2, n2, v2 = b
    try:
        cfg = _apply(_apply(base, w1, n1, v1), w2, n2, v2)
    except ValueError as e:
        assert _named(e, n1) or _named(e, n2), f"{w1}.{n1}={v1!r}, {w2}.{n2}={v2!r}: {e}"
        return
    try:
        _check_valid(cfg, build=False)
    except ValueError as e:
        assert _named(e, n1) or _named(e, n2), f"{w1}.{n1}={v1!r}, {w2}.{n2}={v2!r} passed, then: {e}"


def _all_single_perturbations():
    out = []
    for pname in C.PRESETS:
        base = C.preset(pname)
        parts = [("text", TEXT_FIELDS, base.text), ("top", TOP_FIELDS, base)]
        if base.vision is not None:
            parts.append(("vision", VISION_FIELDS, base.vision))
        for where, names, obj in parts:
            out += [(pname, where, n, v) for n in names for v in _variants(getattr(obj, n))]
    return out


def test_sweep_of_single_field_perturbations():
    """Not random: every (preset, field, perturbation) above, in order - all of them (about 3500, ~40 s) under the
    thorough profile, every 25th under ci. Models are built for nano/small only."""
    cases = _all_single_perturbations()
    assert len(cases) > 1500
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "thorough":
        cases = cases[::25]
    for pname, where, name, value in cases:
        _outcome(C.preset(pname), where, name, value, build=pname in ("nano", "small"))


# ------------------------------------------------------------------------------------------ bad input
BAD = [  # (part, fields changed together, the field the error must name): each was accepted before, or failed late
    ("text", {"norm_topk_prob": "yes"}, "norm_topk_prob"),  # a non-bool flag was taken as truthy
    ("text", {"tie_word_embeddings": 1}, "tie_word_embeddings"),
    ("text", {"rope_scaling": {"type": "yarn", "factor": True}}, "rope_scaling"),  # bool passed the >= 1 check
    ("text", {"rope_scaling": {"type": "yarn", "factor": math.nan}}, "rope_scaling"),  # failed at model build
    ("text", {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}},
     "rope_scaling"),
    ("text", {"rope_scaling": {"type": "yarn", "factor": 4.0, "attention_factor": 2.0}}, "rope_scaling"),  # ignored
    ("text", {"rope_theta": 1e-300}, "rope_theta"),  # NaN logits
    ("text", {"routed_scaling_factor": 1e300}, "routed_scaling_factor"),  # inf in float32
    ("text", {"n_group": 4, "topk_group": 1, "num_experts_per_tok": 3}, "num_experts_per_tok"),  # router failed
    ("vision", {"min_patches": 1, "max_patches": 3}, "max_patches"),  # no whole 2x2 unit fits: preprocessing failed
    ("vision", {"min_patches": 5, "max_patches": 7}, "min_patches"),  # 2 units needed, 1 allowed: budget broken
    ("vision", {"rope_max_height": 1}, "rope_max_height"),  # below the merge kernel
    ("vision", {"min_patches": 5000, "max_patches": 8192}, "min_patches"),  # more than the 64 x 64 RoPE table
    ("vision", {"init_pos_emb_time": 2}, "init_pos_emb_time"),  # failed only when the tower was built
    ("vision", {"rope_theta": 1.0}, "rope_theta"),
    ("top", {"name": 3}, "name"),
]


@pytest.mark.parametrize("where, fields, name", BAD, ids=[f"{w}.{n}" for w, _, n in BAD])
def test_bad_fields_raise_value_error_naming_the_field(where, fields, name):
    base = C.nano()
    with pytest.raises(ValueError, match=name):
        if where == "text":
            base.replace(text=dataclasses.replace(base.text, **fields))
        elif where == "vision":
            base.replace(vision=dataclasses.replace(base.vision, **fields))
        else:
            base.replace(**fields)
