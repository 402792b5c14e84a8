"""Chapter 05's dev probes: train-side items only, no held-out item scored or tracked, reuse, bad input."""

from __future__ import annotations

import json

import pytest

import k25mini.experiments.ch05_fusion.dev as dev
import k25mini.experiments.ch05_fusion.stages as stages
from k25mini.experiments.ch05_fusion import config_for, run_joint
from k25mini.experiments.results import source_hash
from k25mini.world import World, make_eval_suite


def test_dev_items_are_train_side_fresh_and_disjoint_from_the_heldout_suite():
    world = World(0, scale="cpu")
    for suite in ("VisReason", "OCR", "Code"):
        items = dev.dev_suite(world, suite, 24)
        assert len(items) == 24 and all(it.meta["split"] == "train" and it.suite == suite for it in items)
        assert all(world.accepts(it.meta["key"], "train") for it in items)
        held = {(it.meta["key"], it.prompt) for it in make_eval_suite(world, suite, 128)}
        assert not held & {(it.meta["key"], it.prompt) for it in items}
        # the skills round-robin like the held-out suite's, and the draw is a pure function of the world seed
        assert [it.meta["skill"] for it in items] == [it.meta["skill"] for it in make_eval_suite(world, suite, 24)]
        again = dev.dev_suite(World(0, scale="cpu"), suite, 24)
        assert [(it.prompt, it.answer) for it in again] == [(it.prompt, it.answer) for it in items]
    vis = dev.dev_suite(world, "VisReason", 60)
    assert len({(it.meta["key"], it.prompt) for it in vis}) == 60  # every scene distinct


def test_dev_bad_input_is_refused_by_name(tmp_path):
    world = World(0, scale="smoke")
    with pytest.raises(ValueError, match="suite must be"):
        dev.dev_suite(world, "Poetry", 4)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            dev.dev_suite(world, "OCR", n)
    with pytest.raises(ValueError, match="suites must be"):
        dev.dev_sets(config_for("smoke"), 4, ("OCR", "Poetry"))
    with pytest.raises(ValueError, match="schedule"):
        dev.dev_probe("x", "sideways", 0, runs_dir=tmp_path, results_dir=tmp_path)
    with pytest.raises(ValueError, match="seed"):
        dev.dev_probe("x", "early", -1, runs_dir=tmp_path, results_dir=tmp_path)
    with pytest.raises(ValueError, match="name"):
        dev.dev_path("../escape", tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_dev_probe_never_scores_or_tracks_heldout_items(tmp_path, monkeypatch):
    monkeypatch.setenv("K25_SCALE", "smoke")

    def no_tracking(*a, **k):
        raise AssertionError("a dev probe must not track the held-out text suites")

    monkeypatch.setattr(stages, "teacher_forced_exact", no_tracking)
    seen: list = []
    real = dev.score_suites

    def spy(model, tok, evals, *a, **k):
        seen.extend(it for items in evals.values() for it in items)
        return real(model, tok, evals, *a, **k)

    monkeypatch.setattr(dev, "score_suites", spy)
    kw = dict(joint_steps=4, max_new_tokens=2)
    r = dev.dev_probe("smoke_dev", "early", 0, n=6, runs_dir=tmp_path / "runs", results_dir=tmp_path / "res", **kw)
    assert seen and all(it.meta["split"] == "train" for it in seen)
    assert set(r["final"]) == set(dev.DEV_SUITES) == set(r["blind"]) and r["dev_items"] == 6
    assert not r["reused_ablation_run"] and r["timing_s"]["train"] is not None
    assert r["provenance"]["source_hash"] == source_hash(dev.PACKAGE)
    cfg = config_for("smoke", **kw)
    assert r["config_key"] == cfg.key() and r["overrides"] == kw
    ckpt = tmp_path / "runs" / "smoke" / cfg.key() / "dev" / "early-s0"
    assert stages.finished(ckpt, 4)
    hist = [json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert hist and not [h for h in hist if h.get("split") == "eval"]
    # saved and reused while config, run and items match; more items recompute (the checkpoint is kept)
    seen.clear()
    assert dev.dev_probe("smoke_dev", "early", 0, n=6, runs_dir=tmp_path / "runs", results_dir=tmp_path / "res",
                         **kw) == r and not seen
    more = dev.dev_probe("smoke_dev", "early", 0, n=7, runs_dir=tmp_path / "runs", results_dir=tmp_path / "res",
                         **kw)
    assert more["dev_items"] == 7 and more["timing_s"]["train"] is None
    saved = json.loads(dev.dev_path("smoke_dev", tmp_path / "res").read_text())
    assert saved["dev_items"] == 7 and saved["experiment"] == "fusion_ablation/dev"


def test_dev_probe_scores_the_ablations_own_run_without_retraining(tmp_path, monkeypatch):
    monkeypatch.setenv("K25_SCALE", "smoke")
    kw = dict(joint_steps=4, track_every=2, eval_items=1, max_new_tokens=2)
    run_joint(config_for("smoke", **kw), "late", 0, tmp_path / "runs", tmp_path / "res")

    def no_training(*a, **k):
        raise AssertionError("the ablation's finished run must be reused")

    monkeypatch.setattr(dev, "launch", no_training)
    r = dev.dev_probe("base", "late", 0, n=3, suites=("OCR",), runs_dir=tmp_path / "runs",
                      results_dir=tmp_path / "res", **kw)
    assert r["reused_ablation_run"] and r["checkpoint"].endswith("joint/late-s0") and set(r["final"]) == {"OCR"}


def test_the_dev_module_is_outside_chapter_05s_stamp():
    # adding or changing dev probes must not make the committed Table 1 STALE
    files = {p.name for p in stages_files()}
    assert "dev.py" not in files and "stages.py" in files


def stages_files():
    from k25mini.experiments.results import source_files

    return source_files(stages.__name__)


def test_cli_parses_overrides_and_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("K25_SCALE", "smoke")
    got = {}

    def fake(name, schedule, seed, n, suites, force, log, vision_mix, width, **over):
        got.update(name=name, schedule=schedule, seed=seed, n=n, suites=suites, over=over, mix=vision_mix)
        return {"final": {"OCR": 0.5}, "final_by_skill": {"OCR": {"ocr": 0.5}}, "blind": {"OCR": 0.25}}

    monkeypatch.setattr(dev, "dev_probe", fake)
    assert dev.main(["p", "mid", "1", "--set", "joint_steps=8", "grid_pos=true", "--items", "5",
                     "--suites", "OCR", "--mix", "vis_reasoning=3", "ocr=0.5"]) == 0
    assert got == {"name": "p", "schedule": "mid", "seed": 1, "n": 5, "suites": ("OCR",),
                   "over": {"joint_steps": 8, "grid_pos": True}, "mix": {"vis_reasoning": 3.0, "ocr": 0.5}}
    assert "OCR:  50.0 (blind 25.0)" in capsys.readouterr().out
    for bad in (["--mix", "vis_reasoning"], ["--mix", "ocr=lots"]):
        with pytest.raises(SystemExit, match="--mix expects"):
            dev.main(["p", "mid", "1", *bad])


def test_check_mix_names_the_bad_argument():
    assert dev.check_mix(None) == {} and dev.check_mix({"ocr": 1}) == {}  # 1.0 = the ablation's own weight
    assert dev.check_mix({"vis_reasoning": 3, "ocr": 0.5}) == {"ocr": 0.5, "vis_reasoning": 3.0}
    for bad, msg in (({"code": 2}, "not vision corpora"), ({"ocr": -1}, r"vision_mix\['ocr'\]"),
                     ({"ocr": True}, "must be a number"), ([("ocr", 2)], "must be a dict"),
                     ({c: 0 for c in dev.VISION_CORPORA}, "no vision corpus")):
        with pytest.raises(ValueError, match=msg):
            dev.check_mix(bad)


def test_mixed_stream_reads_fresh_rows_in_proportion():
    from k25mini.config import nano
    from k25mini.data import Tokenizer
    from k25mini.multimodal import K25ForConditionalGeneration

    world = World(0, scale="smoke")  # 48 rows per corpus
    counts = K25ForConditionalGeneration(nano()).media_token_counts
    mix = {"vis_reasoning": 3, "ocr": 0}
    n = 48 * (len(dev.VISION_CORPORA) - 2) + 3 * 48
    docs = [d for _, d in zip(range(n), dev.mixed_vision_stream(world, mix, Tokenizer(), counts, 0, 10_000, "t"))]
    assert len(docs) == n
    # one epoch holds every row once: the vis_reasoning rows are 144 distinct train-side rows, OCR none
    plain = list(dev.mixed_vision_stream(world, {}, Tokenizer(), counts, 0, 10_000, "t").__next__().ids)
    assert plain  # the ablation's mix streams too
    from k25mini.world import corpus_item
    want = {tuple(x.ids) for x in (dev.item_to_doc(corpus_item(world, "vis_reasoning", r), Tokenizer(), counts)
                                   for r in range(144))}
    got = {tuple(d.ids) for d in docs}
    assert len(want & got) >= 0.9 * len(want)  # (a few rows can coincide in content)
    ocr = {tuple(dev.item_to_doc(corpus_item(world, "ocr", r), Tokenizer(), counts).ids) for r in range(48)}
    assert not ocr & got


def test_report_lists_dev_probes_with_their_blind_rows(tmp_path):
    from k25mini.experiments.ch05_fusion import report
    from k25mini.experiments.results import write_result

    assert report.DEV_PACKAGE == dev.PACKAGE
    assert report.dev_section(tmp_path) == ""
    base = {"schedule": "early", "seed": 0, "dev_items": 12, "timing_s": {"train": None},
            "final": {"VisReason": 0.5, "OCR": 0.25}, "blind": {"VisReason": 0.3, "OCR": 0.1},
            "final_by_skill": {"VisReason": {"locate": 0.2, "count": 0.8}}}
    d = tmp_path / "fusion_ablation" / "dev"
    write_result(d / "a.json", {**base, "probe": "a", "overrides": {}}, experiment="x", package=dev.PACKAGE)
    write_result(d / "b.json", {**base, "probe": "b", "overrides": {"grid_pos": True}, "timing_s": {"train": 301.2},
                                "vision_mix": {"ocr": 0.5}, "lm_width": 96},
                 experiment="x", package="k25mini.experiments.ch05_fusion.stages")
    text = report.dev_section(tmp_path)
    rows = [x for x in text.splitlines() if x.startswith("| a ") or x.startswith("| b ")]
    assert rows[0] == "| a | early, 0 | none | 12 | 50.0 (30.0) | 25.0 (10.0) | 80.0 | 20.0 | reused |"
    assert rows[1].startswith("| b | early, 0 | grid_pos=True, ocr×0.5, LM width 96 | 12 |")
    assert rows[1].endswith("| 301 |")
    assert "VisReason: count | VisReason: locate" in text  # skills in the suite's own order
    assert "STALE (made by other code than the current one): b." in text


def test_a_mixed_dev_probe_keeps_the_token_budget_and_its_own_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("K25_SCALE", "smoke")
    kw = dict(joint_steps=4, max_new_tokens=2)
    plain = dev.dev_probe("plain", "early", 0, n=3, suites=("VisReason",), runs_dir=tmp_path / "runs",
                          results_dir=tmp_path / "res", **kw)
    mixed = dev.dev_probe("mixed", "early", 0, n=3, suites=("VisReason",), runs_dir=tmp_path / "runs",
                          results_dir=tmp_path / "res", vision_mix={"vis_reasoning": 4, "ocr": 0.25}, **kw)
    assert mixed["vision_mix"] == {"ocr": 0.25, "vis_reasoning": 4.0} and plain["vision_mix"] == {}
    assert "-mix" in mixed["checkpoint"] and mixed["checkpoint"] != plain["checkpoint"]
    assert mixed["tokens"] == plain["tokens"] and plain["tokens"]["vision"] > 0  # same plan, other documents
    assert mixed["config_key"] == plain["config_key"]


def test_a_wider_language_model_retrains_every_stage_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("K25_SCALE", "smoke")
    original = stages.model_config
    kw = dict(joint_steps=3, max_new_tokens=2)
    r = dev.dev_probe("wide", "early", 0, n=3, suites=("OCR",), runs_dir=tmp_path / "runs",
                      results_dir=tmp_path / "res", width=96, **kw)
    assert stages.model_config is original  # restored
    nano_params = sum(p.numel() for p in stages.new_model(config_for("smoke"), 0).parameters())
    assert r["lm_width"] == 96 and r["parameters"] > 1.5 * nano_params
    assert "runs-lm96" in r["checkpoint"] and not (tmp_path / "runs").exists()
    assert stages.finished(tmp_path / "runs-lm96" / "smoke" / "stages" / f"A-{config_for('smoke').stage_key('A')}",
                           config_for("smoke").text_steps)
    w = dev.widened(stages.preset("nano"), 96).text
    assert (w.hidden_size, w.num_attention_heads, w.q_lora_rank, w.moe_intermediate_size) == (96, 6, 48, 72)
    for bad in (0, 40, 95.0, True):
        with pytest.raises(ValueError, match="lm_width must be"):
            dev.dev_probe("x", "early", 0, runs_dir=tmp_path / "r2", results_dir=tmp_path / "r2", width=bad)
    assert stages.model_config is original and not (tmp_path / "r2").exists()
