"""Image-reliance diagnostic: pairing, the NLL against a float64 loop, a blind model's zero gap, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from k25mini.config import nano
from k25mini.data import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.diagnose import _text_after_media_nll, image_reliance, mismatched_pairs
from k25mini.pretrain.docs import item_to_doc
from k25mini.world import World, corpus_item

TOK = Tokenizer()


@pytest.fixture(scope="module")
def world():
    return World(0, scale="smoke")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return K25ForConditionalGeneration(nano()).eval()


@pytest.fixture(scope="module")
def captions(world):
    return [corpus_item(world, "captions", i) for i in range(12)]


def test_pairs_share_token_counts_and_skip_singletons(model, captions, world):
    counts = [tuple(c for im in it.images for c in model.media_token_counts(im)) for it in captions]
    pairs = mismatched_pairs(captions, model.media_token_counts)
    assert pairs and all(i != j and counts[i] == counts[j] for i, j in pairs)
    # every item whose counts occur at least twice is paired exactly once; the rest are left out
    expect = sorted(i for i, c in enumerate(counts) if counts.count(c) > 1)
    assert sorted(i for i, _ in pairs) == expect
    text_only = corpus_item(world, "text_knowledge", 0)
    assert mismatched_pairs([text_only, captions[0]], model.media_token_counts) == []


def test_text_nll_matches_a_float64_loop(model, captions):
    it = captions[0]
    nll, n = _text_after_media_nll(model, TOK, it)
    doc = item_to_doc(it, TOK, model.media_token_counts)
    with torch.no_grad():
        logits = model(torch.tensor([doc.ids]), media=list(it.images))[0].double()
    start = max(k for k, t in enumerate(doc.ids) if t == TOK.media_end_id) + 1
    ref = 0.0
    for t in range(start, len(doc.ids)):  # token t is predicted at position t - 1
        ref -= float(torch.log_softmax(logits[t - 1], -1)[doc.ids[t]])
    assert n == len(doc.ids) - start > 0
    assert nll == pytest.approx(ref, rel=1e-5)


def test_a_model_blind_to_images_has_zero_gap(captions):
    torch.manual_seed(1)
    blind = K25ForConditionalGeneration(nano()).eval()
    with torch.no_grad():  # every image becomes the same (zero) embedding
        for p in blind.vision_tower.projector.parameters():
            p.zero_()
    r = image_reliance(blind, TOK, captions)
    assert r["gap"] == pytest.approx(0.0, abs=1e-6) and r["n_items"] >= 2 and r["n_tokens"] > 0
    assert not blind.training


def test_reliance_restores_training_mode_and_rejects_unpairable_items(model, captions, world):
    model.train()
    r = image_reliance(model, TOK, captions)
    assert model.training and set(r) == {"matched", "mismatched", "gap", "n_items", "n_tokens"}
    model.eval()
    with pytest.raises(ValueError, match="items must hold"):
        image_reliance(model, TOK, [corpus_item(world, "text_knowledge", 0)])


def test_fusion_diagnose_writes_stage_and_joint_rows(tmp_path):
    from k25mini.pretrain.fusion import config_for, diagnose, diagnostics_path, run_joint, stage_vit

    cfg = config_for("smoke", joint_steps=4, track_every=2, eval_items=2, max_new_tokens=2, seeds=(0,),
                     schedules=("early",))
    with pytest.raises(ValueError, match="n_items"):
        diagnose(cfg, (cfg.vit_steps,), tmp_path / "runs", tmp_path / "res", n_items=1)
    stage_vit(cfg, tmp_path / "runs")
    run_joint(cfg, "early", 0, tmp_path / "runs", tmp_path / "res")
    out = diagnose(cfg, (cfg.vit_steps, 999), tmp_path / "runs", tmp_path / "res", n_items=8)
    label = f"{cfg.vit_steps} (decoder, data v{cfg.data_version})"
    # 999 was never trained: skipped, not trained here; B1 is read by its own decoder, B by A's language model
    assert list(out["stage_B"]) == [f"{label} B1, own decoder", label]
    assert out["stage_B"][label]["stage_key"] == cfg.stage_key("B")
    assert out["stage_B"][f"{label} B1, own decoder"]["stage_key"] == cfg.stage_key("B1")
    assert set(out["joint"]) == {"early-s0"} and set(out["joint"]["early-s0"]) >= {"VisKnow", "VisReason", "OCR"}
    rows = [r for r in [*out["stage_B"][label].values(), *out["joint"]["early-s0"].values()]
            if isinstance(r, dict)]
    assert rows and all(r["n_items"] >= 2 for r in rows)  # unpairable sets are None, never a fake zero gap
    assert json.loads(diagnostics_path("smoke", tmp_path / "res").read_text()) == out


def test_skill_scores_against_a_loop_and_bad_inputs(world, model):
    """Per-skill scores equal a plain loop over the same items; chance is in [0, 1]; bad arguments name themselves."""
    from k25mini.pretrain.diagnose import skill_scores
    from k25mini.pretrain.evaluate import greedy_answer
    from k25mini.world import SUITE_SKILLS, score
    from k25mini.world.rng import rng_for

    out = skill_scores(model, TOK, world, "VisReason", 2, max_new_tokens=3)
    assert list(out) == list(SUITE_SKILLS["VisReason"])
    for skill, row in out.items():
        items = [world.sample(skill, "eval", rng_for(world.seed, "skill-check", skill, i)) for i in range(2)]
        want = sum(score(it, greedy_answer(model, TOK, it, 3)) for it in items) / 2
        assert row["score"] == pytest.approx(want) and 0.0 <= row["chance"] <= 1.0 and row["n"] == 2
    with pytest.raises(ValueError, match="suite"):
        skill_scores(model, TOK, world, "Vibes", 2)
    with pytest.raises(ValueError, match="n_per_skill"):
        skill_scores(model, TOK, world, "OCR", 0)


def test_fusion_skill_check_merges_rows(tmp_path):
    from k25mini.pretrain.fusion import config_for, diagnostics_path, run_joint, skill_check

    cfg = config_for("smoke", joint_steps=2, track_every=2, eval_items=1, max_new_tokens=2, seeds=(0,),
                     schedules=("late",))
    run_joint(cfg, "late", 0, tmp_path / "runs", tmp_path / "res")
    d = tmp_path / "runs" / "smoke" / cfg.key() / "joint" / "late-s0"
    out = skill_check(cfg, 1, extra={"again": d}, runs_dir=tmp_path / "runs", results_dir=tmp_path / "res")
    rows = out["skills"]["VisReason"]
    assert set(rows) == {"late-s0", "again"} and rows["late-s0"]["config_key"] == cfg.key()
    strip = lambda r: {k: v for k, v in r.items() if k not in ("config_key", "checkpoint")}  # noqa: E731
    assert strip(rows["late-s0"]) == strip(rows["again"])  # same checkpoint, same items: same scores
    assert json.loads(diagnostics_path("smoke", tmp_path / "res").read_text()) == out
