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


@pytest.fixture(scope="module")
def late_run(tmp_path_factory):
    """One finished 2-step smoke joint run (late, seed 0) with its shared stages: (cfg, runs dir, run folder)."""
    from k25mini.experiments.ch05_fusion import config_for, run_joint

    root = tmp_path_factory.mktemp("late_run")
    cfg = config_for("smoke", joint_steps=2, track_every=2, eval_items=1, max_new_tokens=2, seeds=(0,),
                     schedules=("late",))
    run_joint(cfg, "late", 0, root / "runs", root / "res")
    return cfg, root / "runs", root / "runs" / "smoke" / cfg.key() / "joint" / "late-s0"


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
    from k25mini.experiments.ch05_fusion import config_for, diagnose, diagnostics_path, run_joint, stage_vit

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
    assert out["schema"] == 2 and out["experiment"] == "fusion_ablation/diagnostics"
    assert out["provenance"]["source_hash"]
    # rows another check wrote meanwhile (e.g. a --skills run in a second process) survive a later diagnose
    path = diagnostics_path("smoke", tmp_path / "res")
    path.write_text(json.dumps({**out, "skills": {"VisReason": {"x": {}}}, "joint": {"old-s9": {}}}))
    again = diagnose(cfg, (), tmp_path / "runs", tmp_path / "res", n_items=8)
    assert again["skills"] == {"VisReason": {"x": {}}} and set(again["joint"]) == {"old-s9", "early-s0"}
    assert again["stage_B"] == out["stage_B"] and json.loads(path.read_text()) == again


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
        preds = [greedy_answer(model, TOK, it, 3) for it in items]
        assert row["top_answer"] in preds and row["top_share"] == max(preds.count(p) for p in preds) / 2
        assert row["best_constant"] >= max(sum(score(it, it2.answer) for it in items) / 2 for it2 in items) - 1e-12
    with pytest.raises(ValueError, match="suite"):
        skill_scores(model, TOK, world, "Vibes", 2)
    with pytest.raises(ValueError, match="n_per_skill"):
        skill_scores(model, TOK, world, "OCR", 0)


def test_best_constant_is_the_best_fixed_answer(world):
    """Hand-made items: three count questions with answers 1, 1, 3. The count scorer gives partial credit
    (1 - |p - g| / g): "1" scores (1 + 1 + 1/3) / 3 = 7/9, "3" scores 1/3; a blind model can reach 7/9."""
    import dataclasses

    from k25mini.pretrain.diagnose import best_constant
    from k25mini.world.rng import rng_for

    base = world.sample("count", "eval", rng_for(0, "bc", 0))
    items = [dataclasses.replace(base, answer=a, meta=dict(base.meta)) for a in ("1", "1", "3")]
    assert best_constant(items) == pytest.approx(7 / 9)
    assert best_constant(items[2:]) == 1.0
    with pytest.raises(ValueError, match="items"):
        best_constant([])


def test_blind_baseline_picks_the_best_constant_per_kind_of_question(world):
    """Count items answered 1, 1, 3 (best constant "1": 7/9) and two compare items answered "red", "blue" (one
    constant gets one of two right): the blind baseline is (3 * 7/9 + 2 * 1/2) / 5, while one constant for all
    five items does worse. Items of one skill but different ``attr`` are different kinds of question."""
    import dataclasses

    from k25mini.pretrain.diagnose import best_constant, blind_baseline
    from k25mini.world.rng import rng_for

    count = world.sample("count", "eval", rng_for(0, "bb", 0))
    k = 0
    while True:  # a compare item with its two choices
        cmp_ = world.sample("compare", "eval", rng_for(0, "bb", 1, k))
        if cmp_ is not None:
            break
        k += 1
    a, b = cmp_.meta["choices"]
    items = [dataclasses.replace(count, answer=x, meta=dict(count.meta)) for x in ("1", "1", "3")]
    items += [dataclasses.replace(cmp_, answer=x, meta=dict(cmp_.meta)) for x in (a, b)]
    assert blind_baseline(items) == pytest.approx((3 * 7 / 9 + 2 * 0.5) / 5)
    assert blind_baseline(items) > best_constant(items)
    vk = world.sample("vis_knowledge", "eval", rng_for(0, "bb", 2))
    two = [dataclasses.replace(vk, answer="x", meta={**vk.meta, "attr": "region"}),
           dataclasses.replace(vk, answer="y", meta={**vk.meta, "attr": "friend"})]
    assert blind_baseline(two) == 1.0 and best_constant(two) == 0.5  # by attribute: "x" for one, "y" for the other
    with pytest.raises(ValueError, match="items"):
        blind_baseline([])


def test_fusion_skill_check_merges_rows(tmp_path, late_run):
    from k25mini.experiments.ch05_fusion import diagnostics_path, skill_check

    cfg, runs, d = late_run
    out = skill_check(cfg, 1, extra={"again": d}, runs_dir=runs, results_dir=tmp_path / "res")
    rows = out["skills"]["VisReason"]
    assert set(rows) == {"late-s0", "again"} and rows["late-s0"]["config_key"] == cfg.key()
    strip = lambda r: {k: v for k, v in r.items() if k not in ("config_key", "checkpoint")}  # noqa: E731
    assert strip(rows["late-s0"]) == strip(rows["again"])  # same checkpoint, same items: same scores
    assert json.loads(diagnostics_path("smoke", tmp_path / "res").read_text()) == out


def test_fusion_perception_check_covers_stages_and_runs(tmp_path, late_run):
    from k25mini.experiments.ch05_fusion import diagnostics_path, perception_check

    cfg, runs, d = late_run
    out = perception_check(cfg, 12, extra={"again": d}, runs_dir=runs, results_dir=tmp_path / "res")
    rows = out["fields"]
    assert set(rows) == {"B1 (own decoder)", "B", "late-s0", "again"}
    assert rows["late-s0"]["config_key"] == cfg.key() and rows["B"]["stage_key"] == cfg.stage_key("B")
    strip = lambda r: {k: v for k, v in r.items() if k not in ("config_key", "checkpoint")}  # noqa: E731
    assert strip(rows["late-s0"]) == strip(rows["again"])  # same checkpoint, same rows: same numbers
    facts = {k for sk, r in rows["B"].items() if isinstance(r, dict) for k in r}
    assert {"colour", "shape"} <= facts
    assert json.loads(diagnostics_path("smoke", tmp_path / "res").read_text()) == out
    with pytest.raises(ValueError, match="n_items"):
        perception_check(cfg, 1, runs_dir=runs, results_dir=tmp_path / "res")


class _Oracle(torch.nn.Module):
    """A stand-in model whose argmax is the true next token when it sees an item's document with that item's own
    media, and wrong otherwise; ``miss`` lists characters it always gets wrong."""

    def __init__(self, real, items, miss=""):
        super().__init__()
        self.real, self.miss = real, {TOK.encode(c)[0] for c in miss}
        self.own = {id(it.images[0]): tuple(item_to_doc(it, TOK, real.media_token_counts).ids) for it in items}
        self.language_model = real.language_model

    def media_token_counts(self, x):
        return self.real.media_token_counts(x)

    def forward(self, ids, media=None):
        v = self.language_model.lm_head.weight.shape[0]
        nxt = torch.cat([ids[0, 1:], ids[0, :1]])
        right = media is not None and self.own.get(id(media[0])) == tuple(ids[0].tolist())
        want = torch.tensor([t if right and int(t) not in self.miss else (int(t) + 1) % v for t in nxt])
        return torch.nn.functional.one_hot(want, v).float()[None]


def test_caption_spans_by_skill(world):
    from k25mini.pretrain.diagnose import CAPTION_FIELDS, caption_spans

    seen = {}
    for corpus in ("captions", "charts", "video"):
        for i in range(40):
            it = corpus_item(world, corpus, i)
            if it.meta["skill"] in CAPTION_FIELDS:
                text, spans = caption_spans(it)
                assert spans and all(0 <= a < b <= len(text) for _, a, b in spans)
                seen.setdefault(it.meta["skill"], set()).update(k for k, _, _ in spans)
                if it.meta["skill"] == "caption_ground":
                    kinds = [k for k, _, _ in spans]
                    assert kinds[:7] == ["colour", "shape", "cell", "box", "box", "box", "box"]
                    assert kinds.count("box") == 4 * kinds.count("cell") == 4 * kinds.count("colour")
    assert seen["caption_ground"] == {"colour", "shape", "cell", "box"}
    assert seen["caption_scene"] == {"count", "colour", "shape"}
    assert seen["chart_caption"] == {"colour", "value"}
    assert seen["video_caption"] == {"colour", "shape", "motion"}
    it = corpus_item(world, "text_knowledge", 0)
    with pytest.raises(ValueError, match="skill"):
        caption_spans(it)


def test_caption_fields_with_an_oracle(world, model):
    """Own image: every field right (acc 1); another image: every field wrong (blind 0); an oracle that misses
    digits fails exactly the numeric kinds. Catches any misalignment between the fields and the logits."""
    from k25mini.pretrain.diagnose import CAPTION_FIELDS, caption_fields

    items = list({it.prompt: it for i in range(60) for it in [corpus_item(world, "captions", i)]
                  if it.meta["skill"] in CAPTION_FIELDS}.values())  # unique texts: a swap is always wrong
    out = caption_fields(_Oracle(model, items), TOK, items)
    assert out and all(r["acc"] == 1.0 and r["blind"] == 0.0 and r["n"] > 0 for r in out.values())
    kinds = set(out)
    out = caption_fields(_Oracle(model, items, miss="0123456789"), TOK, items)
    assert set(out) == kinds
    for kind, r in out.items():
        assert r["acc"] == (0.0 if kind in ("count", "cell", "box") else 1.0), kind
    with pytest.raises(ValueError, match="same token counts"):
        caption_fields(model, TOK, items[:1])


def test_caption_fields_real_model_matches_a_prefix_loop(world, model):
    """The one-pass teacher-forced hits equal a slow loop that runs the model on every prefix."""
    from k25mini.pretrain.diagnose import _field_hits, caption_spans

    it = next(x for i in range(40) for x in [corpus_item(world, "captions", i)]
              if x.meta["skill"] == "caption_scene")
    text, spans = caption_spans(it)
    doc = item_to_doc(it, TOK, model.media_token_counts)
    start = max(k for k, t in enumerate(doc.ids) if t == TOK.media_end_id) + 1
    with torch.no_grad():
        hit = []
        for k in range(start, start + len(text)):
            logits = model(torch.tensor([doc.ids[:k]]), media=list(it.images))[0, -1]
            hit.append(int(logits.argmax()) == doc.ids[k])
    want = [(kind, all(hit[a:b])) for kind, a, b in spans]
    assert _field_hits(model, TOK, it, list(it.images)) == want


def test_linear_probe_reads_separable_labels_and_not_noise():
    """Labels that are a linear function of the features are read (almost) perfectly; labels independent of the
    features stay near chance on held-out rows; shapes are checked."""
    from k25mini.pretrain.diagnose import linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    y = (x[:, :3] @ torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]])).argmax(1)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) >= 0.9
    noise = torch.randint(0, 4, (400,), generator=g)
    assert linear_probe(x[:300], noise[:300], x[300:], noise[300:]) <= 0.45  # chance 0.25
    with pytest.raises(ValueError, match="same d"):
        linear_probe(x[:300], y[:300], x[300:, :5], y[300:])
    with pytest.raises(ValueError, match="label every row"):
        linear_probe(x[:300], y[:200], x[300:], y[300:])


def test_vision_probe_on_a_tiny_model(model):
    """Every label gets a flat and a pooled accuracy in [0, 1] and its chance; a position-revealing layout
    (flat) reads the grid cell of one object better than chance even from an untrained tower."""
    from k25mini.pretrain.diagnose import vision_probe

    was = model.training
    out = vision_probe(model, n=160, side=48)
    assert model.training is was  # the previous mode is restored
    assert set(out) == {"cell", "shape", "colour"}
    for r in out.values():
        assert 0.0 <= r["flat"] <= 1.0 and 0.0 <= r["pooled"] <= 1.0 and 0.0 < r["chance"] < 1.0
    assert out["cell"]["chance"] == pytest.approx(1 / 9) and out["cell"]["flat"] > 2 * out["cell"]["chance"]
    with pytest.raises(ValueError, match="n must"):
        vision_probe(model, n=4)
    with pytest.raises(ValueError, match="test_share"):
        vision_probe(model, n=16, test_share=1.0)


def test_fusion_vision_check_rows(tmp_path, late_run):
    from k25mini.experiments.ch05_fusion import diagnostics_path, vision_check

    cfg, runs, _ = late_run
    out = vision_check(cfg, 16, runs_dir=runs, results_dir=tmp_path / "res")
    rows = out["vision_probe"]
    assert set(rows) == {"untrained (A)", "B1", "B", "late-s0"}
    assert rows["B1"]["stage_key"] == cfg.stage_key("B1") and rows["late-s0"]["n"] == 16
    assert json.loads(diagnostics_path("smoke", tmp_path / "res").read_text()) == out


def test_fusion_vision_budget_check_trains_on_vision_documents_only(tmp_path, late_run, model):
    from k25mini.experiments.ch05_fusion import BUDGET_MIXES, VISION_SUITES, diagnostics_path, vision_budget_check
    from k25mini.pretrain.docs import doc_stream

    cfg, runs, _ = late_run
    res = tmp_path / "res"
    path = diagnostics_path("smoke", res)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"skills": {"kept": 1}}))  # rows of other checks survive the merge
    out = vision_budget_check(cfg, (1, 2), ("reason",), (0,), runs_dir=runs, results_dir=res)
    assert out["skills"] == {"kept": 1} and json.loads(path.read_text()) == out
    from k25mini.experiments.ch05_fusion import eval_sets as _eval_sets
    from k25mini.pretrain.diagnose import best_constant
    from k25mini.world import SUITES

    evals = _eval_sets(cfg)
    assert out["best_constant"] == {"config_key": cfg.key(), **{s: best_constant(evals[s]) for s in SUITES}}
    rows = out["vision_budget"]
    assert set(rows) == {"B1 (own decoder)", "reason-1-s0", "reason-2-s0"}
    assert rows["B1 (own decoder)"]["steps"] == cfg.vit_steps and rows["B1 (own decoder)"]["tokens"] > 0
    # tokens = the whole image-text documents that fit the rows, first fit in stream order (an independent count)
    docs = doc_stream(World(cfg.world_seed, scale="smoke"), BUDGET_MIXES["reason"], TOK,
                      model.media_token_counts, 0, max_len=cfg.seq_len, tag="budget-reason")
    lens, want = [len(next(docs).ids) for _ in range(200)], []
    k = 0
    for _ in range(2):  # steps
        used = 0
        for _ in range(cfg.rows):
            col = 0
            while col + lens[k] <= cfg.seq_len:
                col, used, k = col + lens[k], used + lens[k], k + 1
        want.append(used)
    assert rows["reason-1-s0"]["tokens"] == want[0] and rows["reason-2-s0"]["tokens"] == sum(want)
    for name, r in rows.items():
        assert set(r["final"]) == set(VISION_SUITES) and all(0 <= v <= 1 for v in r["final"].values())
        if name.startswith("reason"):
            assert r["stage_key"] == cfg.stage_key("B") and r["corpora"] == list(BUDGET_MIXES["reason"])
    again = vision_budget_check(cfg, (1,), ("reason",), (0,), runs_dir=runs, results_dir=res)
    assert again["vision_budget"]["B1 (own decoder)"] == rows["B1 (own decoder)"]  # kept, not re-scored
    for bad, match in (((), "steps"), ((0,), "steps"), ((True,), "steps")):
        with pytest.raises(ValueError, match=match):
            vision_budget_check(cfg, bad, runs_dir=runs, results_dir=res)
    with pytest.raises(ValueError, match="mixes"):
        vision_budget_check(cfg, (1,), ("text",), runs_dir=runs, results_dir=res)
    with pytest.raises(ValueError, match="seeds"):
        vision_budget_check(cfg, (1,), seeds=(-1,), runs_dir=runs, results_dir=res)
