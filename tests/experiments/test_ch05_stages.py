"""Fusion pre-training pipeline (smoke scale): documents, evaluation, stages, results."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from k25mini.config import nano
from k25mini.data import Tokenizer
from k25mini.experiments.ch05_fusion import (
    FusionConfig,
    aggregate,
    batch_from,
    config_for,
    lm_loss,
    pack_vision_only,
    packed_steps,
    run_joint,
)
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.docs import doc_stream, item_to_doc, prompt_ids
from k25mini.pretrain.evaluate import evaluate_items, greedy_answer, teacher_forced_exact
from k25mini.pretrain.fusion_schedule import SCHEDULES
from k25mini.pretrain.packing import IGNORE
from k25mini.world import World, corpus_item, make_eval_suite

TOK = Tokenizer()


@pytest.fixture(scope="module")
def world():
    return World(0, scale="smoke")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return K25ForConditionalGeneration(nano())


def test_item_to_doc_expands_each_placeholder(world, model):
    item = corpus_item(world, "interleaved", 3)
    doc = item_to_doc(item, TOK, model.media_token_counts)
    want = sum(c for im in item.images for c in model.media_token_counts(im))
    assert doc.ids[0] == TOK.bos_id and doc.ids[-1] == TOK.eos_id
    assert doc.ids.count(TOK.media_pad_id) == want and len(doc.media) == len(item.images)
    # removing the expansion gives back the plain encoding
    assert TOK.decode(doc.ids).replace("<|media_pad|>", "") == TOK.decode(
        TOK.encode(item.text(), add_bos=True, add_eos=True)).replace("<|media_pad|>", "")


def test_prompt_is_a_prefix_of_the_training_document(world, model):
    for suite in ("OCR", "Code"):
        item = make_eval_suite(world, suite, 2)[0]
        p = prompt_ids(item, TOK, model.media_token_counts)
        d = item_to_doc(item, TOK, model.media_token_counts).ids
        assert d[: len(p)] == p and TOK.decode(d[len(p): -1]) == item.answer


def test_doc_stream_is_seeded_filtered_and_endless(world, model):
    a = doc_stream(world, ["code"], TOK, model.media_token_counts, seed=1)
    b = doc_stream(world, ["code"], TOK, model.media_token_counts, seed=1)
    c = doc_stream(world, ["code"], TOK, model.media_token_counts, seed=2)
    first = [next(a).ids for _ in range(5)]
    assert first == [next(b).ids for _ in range(5)] and first != [next(c).ids for _ in range(5)]
    rows = world.sizes.corpus_rows
    assert len([next(a) for _ in range(2 * rows)]) == 2 * rows  # survives the epoch boundary
    cap = doc_stream(world, ["captions"], TOK, model.media_token_counts, 0, max_len=80,
                     skills=frozenset({"caption_entity"}))
    assert all(len(next(cap).ids) <= 80 for _ in range(5))
    with pytest.raises(ValueError, match="corpora"):
        next(doc_stream(world, ["nope"], TOK, model.media_token_counts, 0))
    with pytest.raises(ValueError, match="no document"):
        next(doc_stream(world, ["captions"], TOK, model.media_token_counts, 0, max_len=3))


def test_schedules_consume_identical_token_totals_through_the_pipeline(world, model):
    cfg = config_for("smoke")
    totals = set()
    for s in SCHEDULES.values():
        steps = packed_steps(cfg, s, cfg.joint_steps, 0, "t", world, TOK, model.media_token_counts)
        assert all(st.input_ids.shape == (cfg.rows, cfg.seq_len) for st in steps)
        # every media pad has its media: pads == tokens the tower will produce
        for st in steps:
            want = sum(c for m in st.media for c in model.media_token_counts(m))
            assert int((st.input_ids == TOK.media_pad_id).sum()) == want
        totals.add((sum(st.vision_tokens for st in steps), sum(st.text_tokens for st in steps)))
    assert len(totals) == 1
    v, t = totals.pop()
    assert v == round(0.1 * cfg.joint_steps * cfg.tokens_per_step) and v + t == cfg.joint_steps * cfg.tokens_per_step


def test_pack_vision_only_masks_padding_and_media(world, model):
    docs = doc_stream(world, ["captions"], TOK, model.media_token_counts, 0, max_len=64)
    steps = pack_vision_only(docs, 2, 2, 64, TOK.pad_id, TOK.media_pad_id)
    assert len(steps) == 2
    for st in steps:
        pads = st.input_ids == TOK.pad_id
        assert pads.any() and (st.labels[pads] == IGNORE).all()
        assert not np.isin(st.labels, [TOK.media_pad_id, TOK.pad_id]).any()
        assert (st.position_ids[st.doc_ids != np.roll(st.doc_ids, 1, axis=1)] == 0).all()
        want = sum(c for m in st.media for c in model.media_token_counts(m))
        assert int((st.input_ids == TOK.media_pad_id).sum()) == want
        loss, _ = lm_loss(model, batch_from(st))
        assert torch.isfinite(loss)


def test_teacher_forced_exact_matches_greedy_generation(world, model):
    """TF exact-match must agree with greedy exact-match; force agreement on one item by training on it."""
    items = make_eval_suite(world, "TextKnow", 3)
    m = K25ForConditionalGeneration(nano())
    torch.manual_seed(1)
    docs = [item_to_doc(items[0], TOK, m.media_token_counts)]
    ids = torch.tensor([docs[0].ids])
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), IGNORE)], 1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        m.loss(ids, labels).backward()
        opt.step()
    assert greedy_answer(m, TOK, items[0]) == items[0].answer
    assert teacher_forced_exact(m, TOK, items[:1]) == 1.0
    tf = teacher_forced_exact(m, TOK, items)
    greedy_exact = np.mean([greedy_answer(m, TOK, it) == it.answer for it in items])
    assert tf <= greedy_exact + 1e-9  # TF exact implies greedy exact
    mean, per = evaluate_items(m, TOK, items[:1])
    assert mean == per[0] == 1.0
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_answer(m, TOK, items[0], 0)
    with pytest.raises(ValueError, match="items"):
        evaluate_items(m, TOK, [])


def test_data_version_keys_and_guard(tmp_path):
    from k25mini.experiments.ch05_fusion import VISION_DOCS_VERSION as DATA_VERSION
    from k25mini.experiments.ch05_fusion import stage_vit

    new, old = config_for("smoke"), config_for("smoke", data_version=1)
    assert new.data_version == DATA_VERSION >= 3
    # from version 3 on the world's text changed too (fewer entities at cpu scale): every stage is recomputed
    assert new.stage_key("A") != old.stage_key("A")
    assert new.stage_key("B") != old.stage_key("B") and new.key() != old.key()
    # the ViT stage's dense Q&A rows are a B1 (and so B) setting, not an A one
    qa_off = config_for("smoke", vit_qa=False)
    assert qa_off.stage_key("A") == new.stage_key("A") and qa_off.stage_key("B1") != new.stage_key("B1")
    with pytest.raises(ValueError, match="vit_qa"):
        config_for("smoke", vit_qa=1)
    for fn in (lambda: stage_vit(old, tmp_path), lambda: run_joint(old, "early", 0, tmp_path, tmp_path)):
        with pytest.raises(ValueError, match="data_version"):
            fn()
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_config_key_tracks_what_matters():
    a, b = config_for("smoke"), config_for("smoke", seeds=(5,))
    assert a.key() == b.key()  # the seed list does not change a run's config
    assert a.key() != config_for("smoke", joint_steps=11).key()
    assert isinstance(a, FusionConfig) and a.tokens_per_step == a.rows * a.seq_len


def test_smoke_run_end_to_end_and_reuse(tmp_path):
    cfg = config_for("smoke", joint_steps=6, track_every=3, eval_items=1, max_new_tokens=2, seeds=(0,),
                     schedules=("late",))
    r = run_joint(cfg, "late", 0, tmp_path / "runs", tmp_path / "res")
    assert set(r["final"]) == {"VisKnow", "VisReason", "OCR", "TextKnow", "TextReason", "Code"}
    assert [p["step"] for p in r["text_curve"]] == [0, 3, 6]
    assert r["tokens"]["vision"] == round(0.1 * 6 * cfg.tokens_per_step)
    assert (tmp_path / "runs" / "smoke" / cfg.key() / "joint" / "late-s0" / "metrics.jsonl").is_file()
    # reused, not recomputed
    again = run_joint(cfg, "late", 0, tmp_path / "runs", tmp_path / "res")
    assert again["timing_s"] == r["timing_s"]
    agg = aggregate(cfg, tmp_path / "res")
    assert agg["complete"] and agg["table"]["late"]["seeds"] == [0]
    saved = json.loads((tmp_path / "res" / "fusion_ablation_smoke.json").read_text())
    assert saved["config_key"] == cfg.key() and set(saved["chance"]) == set(r["final"])
    # the blind baseline of every suite, computed from the same eval items (best constant per kind of question)
    from k25mini.pretrain.diagnose import blind_baseline as blind_of
    assert set(saved["blind"]) == set(r["final"])
    for s in saved["blind"]:
        items = make_eval_suite(World(cfg.world_seed, scale="smoke"), s, cfg.eval_items)
        assert saved["blind"][s] == pytest.approx(blind_of(items)) and saved["blind"][s] >= saved["chance"][s] - 1e-9
    # per-skill scores: one entry per skill of the evaluated items, averaging to the suite score
    world = World(cfg.world_seed, scale="smoke")
    for s, items in ((s, make_eval_suite(world, s, cfg.eval_items)) for s in r["final"]):
        per = r["final_by_skill"][s]
        assert set(per) == {it.meta["skill"] for it in items}
        n = {k: sum(it.meta["skill"] == k for it in items) for k in per}
        assert sum(per[k] * n[k] for k in per) / len(items) == pytest.approx(r["final"][s])
        assert set(saved["chance_by_skill"][s]) == set(per)
    assert agg["table"]["late"]["by_skill"]["VisReason"] == {
        k: {"mean": v, "std": 0.0} for k, v in r["final_by_skill"]["VisReason"].items()}
    with pytest.raises(ValueError, match="schedule"):
        run_joint(cfg, "sideways", 0, tmp_path / "runs", tmp_path / "res")


def test_probe_changes_the_vision_share_and_reuses_shared_stages(tmp_path, monkeypatch):
    import k25mini.experiments.ch05_fusion as fusion

    monkeypatch.setenv("K25_SCALE", "smoke")
    kw = dict(joint_steps=5, track_every=5, eval_items=1, max_new_tokens=1, vision_share=0.3)
    r = fusion.run_probe("more_vision", "mid", 0, tmp_path / "res", tmp_path / "runs", **kw)
    cfg = config_for("smoke", **kw)
    assert r["tokens"]["vision"] == round(0.3 * 5 * cfg.tokens_per_step) and r["vision_ratio"] == pytest.approx(0.6)
    assert (tmp_path / "res" / "fusion_ablation" / "probes" / "more_vision.json").is_file()
    # a joint-only change keeps the stage checkpoints' keys
    assert cfg.stage_key("B") == config_for("smoke").stage_key("B") and cfg.key() != config_for("smoke").key()
    assert cfg.stage_key("A") != config_for("smoke", text_steps=5).stage_key("A")
    with pytest.raises(ValueError, match="stage"):
        cfg.stage_key("C")


def _resume_case(tmp_path, world, inject_at: float) -> None:
    """Interrupt a mixed text+vision run after 2 of 4 steps, resume from the checkpoint: same weights."""
    from k25mini.pretrain.fusion_schedule import schedule_for_share
    from k25mini.train import TrainConfig, Trainer

    cfg = config_for("smoke", rows=2, seq_len=128)
    torch.manual_seed(0)
    counts = K25ForConditionalGeneration(nano()).media_token_counts
    steps = packed_steps(cfg, schedule_for_share(inject_at, 0.3), 4, 0, "resume", world, TOK, counts)
    assert any(st.media for st in steps[2:]) and bool(steps[0].media) == (inject_at == 0)

    def trainer(out):
        torch.manual_seed(0)
        m = K25ForConditionalGeneration(nano())
        tc = TrainConfig(steps=4, lr=2e-3, optimizer="muonclip", out_dir=str(out), ckpt_every=2, progress=False,
                         log_every=1)
        return Trainer(m, lm_loss, lambda i: batch_from(steps[i]), tc)

    full = trainer(tmp_path / "full")
    full.fit()
    cut = trainer(tmp_path / "cut")
    cut.fit(until=2)
    resumed = trainer(tmp_path / "cut")
    assert resumed.resume() and resumed.step == 2
    resumed.fit()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_joint_training_resumes_bit_exactly(tmp_path, world):
    _resume_case(tmp_path, world, inject_at=0.0)


def test_resume_from_a_checkpoint_before_vision_enters(tmp_path, world):
    _resume_case(tmp_path, world, inject_at=0.5)


def test_ablation_in_worker_processes_equals_one_process(tmp_path):
    """``workers=2``: shared stages once, then joint runs in spawned processes — same results as one process."""
    from k25mini.experiments.ch05_fusion import run_ablation

    cfg = config_for("smoke", joint_steps=4, track_every=2, eval_items=1, max_new_tokens=2, seeds=(0,),
                     schedules=("early", "late"))
    with pytest.raises(ValueError, match="workers"):
        run_ablation(cfg, runs_dir=tmp_path / "r0", results_dir=tmp_path / "s0", workers=0)
    one = run_ablation(cfg, runs_dir=tmp_path / "r1", results_dir=tmp_path / "s1")
    seen = []
    two = run_ablation(cfg, runs_dir=tmp_path / "r2", results_dir=tmp_path / "s2", workers=2,
                       log=lambda sch, seed, r: seen.append((sch, seed)))
    assert seen == [("early", 0), ("late", 0)]
    assert len(one["runs"]) == len(two["runs"]) == 2
    for a, b in zip(one["runs"], two["runs"], strict=True):
        assert (a["schedule"], a["final"], a["text_curve"]) == (b["schedule"], b["final"], b["text_curve"])


def test_two_step_vit_stage_keeps_the_language_model_and_b1_encoder(tmp_path):
    """B1 trains ViT + projector through a throwaway trainable copy of A's LM; B2 trains only the projector into
    A's frozen LM. The finished B checkpoint: A's LM exactly, B1's encoder exactly, a re-trained projector."""
    from k25mini.experiments.ch05_fusion import stage_dir as _stage_dir
    from k25mini.experiments.ch05_fusion import stage_text, stage_vit
    from k25mini.train.checkpoint import load_weights

    cfg = config_for("smoke", vit_steps=2, proj_steps=2)
    b = stage_vit(cfg, tmp_path)
    models = {}
    for name, path in (("A", stage_text(cfg, tmp_path)), ("B1", _stage_dir(cfg, "B1", tmp_path)), ("B", b)):
        m = K25ForConditionalGeneration(nano())
        load_weights(m, path)
        models[name] = m.state_dict()
    lm = [k for k in models["A"] if k.startswith("language_model.")]
    enc = [k for k in models["A"] if k.startswith("vision_tower.") and ".projector." not in k]
    proj = [k for k in models["A"] if ".projector." in k]
    assert lm and enc and proj
    assert all(torch.equal(models["B"][k], models["A"][k]) for k in lm)
    assert not all(torch.equal(models["B1"][k], models["A"][k]) for k in lm)  # the decoder copy did train
    assert all(torch.equal(models["B"][k], models["B1"][k]) for k in enc)
    assert not all(torch.equal(models["B"][k], models["B1"][k]) for k in proj)
    assert stage_vit(cfg, tmp_path) == b  # finished: reused


def test_vit_stage_keys_and_bad_settings():
    base = config_for("smoke")
    assert base.vit_align == "decoder"
    more = config_for("smoke", proj_steps=base.proj_steps + 1)
    assert more.stage_key("B1") == base.stage_key("B1") and more.stage_key("B") != base.stage_key("B")
    frozen = config_for("smoke", vit_align="frozen")
    assert frozen.stage_key("B") != base.stage_key("B") and frozen.key() != base.key()
    # proj_steps means nothing to the one-step stage: it does not enter its keys
    assert config_for("smoke", vit_align="frozen", proj_steps=0).stage_key("B") == frozen.stage_key("B")
    for bad in ({"vit_align": "thawed"}, {"proj_steps": 0}, {"proj_steps": 1.5}, {"vit_steps": 0},
                {"joint_steps": True}, {"proj_lr": 0.0}, {"proj_lr": "fast"}, {"proj_lr": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            config_for("smoke", **bad)


def test_proj_lr_enters_only_stage_b_and_every_field_is_hashed():
    """Results schema 2: the run key hashes every field but the seeds (no carve-outs for older results); B2's
    learning rate changes the B key and the run key, never A's or B1's (so B1 is reused)."""
    base = config_for("smoke")
    assert base.proj_lr is None
    d = base.to_dict()
    d.pop("seeds")
    d["schedule_defs"] = {s: [SCHEDULES[s].inject_at, SCHEDULES[s].vision_ratio] for s in base.schedules}
    assert base.key() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    fast = config_for("smoke", proj_lr=1e-2)
    assert fast.stage_key("A") == base.stage_key("A") and fast.stage_key("B1") == base.stage_key("B1")
    assert fast.stage_key("B") != base.stage_key("B") and fast.key() != base.key()
    assert config_for("smoke", proj_lr=base.vit_lr).stage_key("B") != base.stage_key("B")  # explicit is recorded


def test_cli_set_parses_typed_overrides():
    from k25mini.experiments.ch05_fusion.__main__ import parse_override as _parse_override

    cfg = config_for("smoke")
    assert _parse_override(cfg, "proj_steps=700") == ("proj_steps", 700)
    assert _parse_override(cfg, "proj_lr=0.01") == ("proj_lr", 0.01)
    assert _parse_override(cfg, "proj_lr=none") == ("proj_lr", None)
    assert _parse_override(cfg, "vision_share=0.2") == ("vision_share", 0.2)
    assert _parse_override(cfg, "seeds=0,4") == ("seeds", (0, 4))
    assert _parse_override(cfg, "vit_align=frozen") == ("vit_align", "frozen")
    with pytest.raises(ValueError, match="name=value"):
        _parse_override(cfg, "proj_steps")
    with pytest.raises(ValueError, match="no config field 'nope'"):
        _parse_override(cfg, "nope=1")


def test_cli_check_arguments():
    from pathlib import Path

    from k25mini.experiments.ch05_fusion.__main__ import check_args as _check_args

    assert _check_args(["60"], None) == (60, None, {})
    n, sel, extra = _check_args(["12", "probe=runs/x", "b=/abs/y=z"], ["early:0", "late:2"])
    assert (n, sel) == (12, [("early", 0), ("late", 2)])
    assert extra == {"probe": Path("runs/x"), "b": Path("/abs/y=z")}
