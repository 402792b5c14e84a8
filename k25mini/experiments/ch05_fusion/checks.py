"""Chapter 05's diagnostic checks: why do (or don't) the models read the image?

Each check loads checkpoints of the ablation (the shared stages, the finished joint runs, or any named run
folder), measures something with :mod:`k25mini.pretrain.diagnose`, and merges its rows into
``results/fusion_ablation/diagnostics_<scale>.json`` (re-read before each write: several checks may run side
by side). Rows carry the config or stage key they were measured on.

* :func:`diagnose` - image reliance: loss with the own image vs another image;
* :func:`skill_check` - per-skill scores with chance and the answer prior;
* :func:`perception_check` - caption facts read off the pixels, fact by fact;
* :func:`vision_check` - linear probes of the vision tokens;
* :func:`blind_check` - each suite's blind baseline (best constant answer per kind of question);
* :func:`vision_budget_check` - vision-only training from the ViT stage: how much vision data is enough.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch05_fusion.config import TEXT_SUITES, VIT_CORPORA, VIT_SKILLS, FusionConfig
from k25mini.experiments.ch05_fusion.evaluation import eval_sets, score_suites
from k25mini.experiments.ch05_fusion.stages import (
    b_steps,
    batch_from,
    finished,
    joint_root,
    lm_loss,
    new_model,
    pack_vision_only,
    stage_dir,
    stage_vit,
    train_config,
    vit_docs,
)
from k25mini.experiments.results import read_json, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.pretrain.diagnose import image_reliance, mismatched_pairs
from k25mini.pretrain.docs import doc_stream
from k25mini.train import Trainer, load_weights
from k25mini.world import SUITES, VISION_CORPORA, World, corpus_item

__all__ = ["VISION_SUITES", "BUDGET_MIXES", "diagnostics_path", "save_diagnostics", "diagnose", "check_targets",
           "skill_check", "perception_check", "vision_check", "blind_check", "vision_budget_check"]

VISION_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s not in TEXT_SUITES)
#: caption documents for the ViT-stage check come from corpus rows far beyond any stage's training rows
_DIAG_ROW0 = 10**6


def diagnostics_path(scale: str, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / "fusion_ablation" / f"diagnostics_{scale}.json"


def save_diagnostics(path: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write the merged diagnostics atomically, stamped with the results schema and the code version of the
    checks (the last writer's; each row keeps the config or stage key it was measured on). Returns the file's
    content."""
    return write_result(path, content, experiment="fusion_ablation/diagnostics",
                        package="k25mini.experiments.ch05_fusion.checks")


def _reliance(model, tok: Tokenizer, items: list) -> dict[str, Any] | None:
    """image_reliance, or None when no two items' media have the same size (nothing to swap)."""
    return image_reliance(model, tok, items) if mismatched_pairs(items, model.media_token_counts) else None


def diagnose(cfg: FusionConfig, vit_steps: tuple[int, ...] = (), runs_dir: Path | None = None,
             results_dir: Path | None = None, n_items: int = 48) -> dict[str, Any]:
    """Does the model read the image (:func:`k25mini.pretrain.diagnose.image_reliance`)?

    * ``stage_B[<label>]``: the ViT-stage checkpoint of ``cfg`` with each listed ``vit_steps`` (when trained),
      on ``n_items`` unseen caption documents per ViT corpus; the label is the steps, plus the ``vit_align`` and
      data version off the first design; with ``vit_align="decoder"`` also B1 read by its own decoder;
    * ``joint[<schedule>-s<seed>]``: every finished joint run of ``cfg``, on the held-out vision suites.
    An entry is None when no two of its documents have same-sized media.
    Merged into ``results/fusion_ablation/diagnostics_<scale>.json`` (written atomically) and returned."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 2:
        raise ValueError(f"n_items must be an int >= 2, got {n_items!r}")
    path = diagnostics_path(cfg.scale, results_dir)
    out: dict[str, Any] = {}  # this call's rows, merged into the file at the end
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    for v in vit_steps:
        c = dataclasses.replace(cfg, vit_steps=int(v))
        d = stage_dir(c, "B", runs_dir)
        if not finished(d, b_steps(c)):
            continue
        label = str(v)
        if (c.vit_align, c.data_version) != ("frozen", 1):
            label += f" ({c.vit_align}, data v{c.data_version})"
        todo = [(label, d, "B")]
        if c.vit_align == "decoder":  # B1 read by its own trainable decoder (the thrown-away LM copy)
            todo.insert(0, (f"{label} B1, own decoder", stage_dir(c, "B1", runs_dir), "B1"))
        for name, ckpt, stage in todo:
            model = new_model(c, c.stage_seed)
            load_weights(model, ckpt)
            row = {}
            for corpus in VIT_CORPORA:
                items = [corpus_item(world, corpus, _DIAG_ROW0 + i) for i in range(n_items)]
                items = [it for it in items if it.meta.get("skill") in VIT_SKILLS]
                row[corpus] = _reliance(model, tok, items)
            out.setdefault("stage_B", {})[name] = {"stage_key": c.stage_key(stage), **row}
    evals = eval_sets(cfg)
    for sch in cfg.schedules:
        for seed in cfg.seeds:
            d = joint_root(cfg, runs_dir) / "joint" / f"{sch}-s{seed}"
            if not finished(d, cfg.joint_steps):
                continue
            model = new_model(cfg, seed)
            load_weights(model, d)
            out.setdefault("joint", {})[f"{sch}-s{seed}"] = {
                "config_key": cfg.key(), **{s: _reliance(model, tok, evals[s]) for s in VISION_SUITES}}
    merged = (read_json(path) or {})  # read late: other checks may have written
    for part, rows in out.items():
        merged.setdefault(part, {}).update(rows)
    return save_diagnostics(path, merged)


def check_targets(cfg: FusionConfig, runs: list[tuple[str, int]] | None, extra: dict[str, Path] | None,
                   runs_dir: Path | None, stages: tuple[tuple[str, str], ...] = ()) -> dict[str, tuple[Path, dict]]:
    """name -> (checkpoint folder, key fields) for a check: the finished shared ``stages`` ((stage, label) pairs;
    B1 only with the two-step ViT stage), the finished joint runs of ``cfg`` (``runs``: (schedule, seed) pairs,
    default all) and ``extra`` checkpoints (name -> folder, e.g. a probe's)."""
    steps = {"A": cfg.text_steps, "B1": cfg.vit_steps, "B": b_steps(cfg)}
    todo: dict[str, tuple[Path, dict]] = {}
    for stage, label in stages:
        d = stage_dir(cfg, stage, runs_dir)
        if (stage != "B1" or cfg.vit_align == "decoder") and finished(d, steps[stage]):
            todo[label] = (d, {"stage_key": cfg.stage_key(stage)})
    for sch, seed in runs if runs is not None else [(a, b) for a in cfg.schedules for b in cfg.seeds]:
        d = joint_root(cfg, runs_dir) / "joint" / f"{sch}-s{seed}"
        if finished(d, cfg.joint_steps):
            todo[f"{sch}-s{seed}"] = (d, {"config_key": cfg.key()})
    for name, d in (extra or {}).items():
        todo[name] = (Path(d), {"config_key": None})
    return todo


def _check_each(cfg: FusionConfig, todo: dict[str, tuple[Path, dict]], where: tuple[str, ...], measure,
                results_dir: Path | None) -> dict[str, Any]:
    """Load each checkpoint of ``todo``, ``measure(model) -> row``, and merge the row into the diagnostics JSON
    under ``where + (name,)`` after each model (re-read first: several checks may run side by side, and a long
    check keeps what it has measured). Returns the file's content."""
    path = diagnostics_path(cfg.scale, results_dir)
    out = (read_json(path) or {})
    for name, (d, key) in todo.items():
        model = new_model(cfg, 0)
        load_weights(model, d)
        row = measure(model)
        out = (read_json(path) or {})
        node = out
        for k in where:
            node = node.setdefault(k, {})
        node[name] = {**key, "checkpoint": str(d), **row}
        out = save_diagnostics(path, out)
    return out


def skill_check(cfg: FusionConfig, n_per_skill: int, runs: list[tuple[str, int]] | None = None,
                extra: dict[str, Path] | None = None, suite: str = "VisReason", runs_dir: Path | None = None,
                results_dir: Path | None = None) -> dict[str, Any]:
    """Per-skill greedy scores with chance (:func:`k25mini.pretrain.diagnose.skill_scores`, ``n_per_skill`` items
    per skill) of the finished joint runs of ``cfg`` (``runs``: (schedule, seed) pairs, default all) and of
    ``extra`` checkpoints (name -> run folder, e.g. a probe's). Merged into the diagnostics JSON under
    ``skills[suite][name]`` and returned."""
    from k25mini.pretrain.diagnose import skill_scores

    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    return _check_each(cfg, check_targets(cfg, runs, extra, runs_dir), ("skills", suite),
                       lambda m: skill_scores(m, tok, world, suite, n_per_skill, cfg.max_new_tokens), results_dir)


def perception_check(cfg: FusionConfig, n_items: int, runs: list[tuple[str, int]] | None = None,
                     extra: dict[str, Path] | None = None, runs_dir: Path | None = None,
                     results_dir: Path | None = None) -> dict[str, Any]:
    """What each model reads off the pixels, fact by fact (:func:`k25mini.pretrain.diagnose.caption_fields`:
    teacher-forced field accuracy with the own image and with another one) on unseen caption rows (``n_items``
    rows per ViT corpus): the ViT stage (B1 read by its own caption decoder, and B), the finished joint runs of
    ``cfg`` (``runs``: (schedule, seed) pairs, default all) and ``extra`` checkpoints (name -> folder). Merged into
    the diagnostics JSON under ``fields[name]`` and returned."""
    from k25mini.pretrain.diagnose import CAPTION_FIELDS, caption_fields

    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 2:
        raise ValueError(f"n_items must be an int >= 2, got {n_items!r}")
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    items = [corpus_item(world, c, _DIAG_ROW0 + i) for c in VIT_CORPORA for i in range(n_items)]
    by_skill: dict[str, list] = {}
    for it in items:
        if it.meta.get("skill") in CAPTION_FIELDS:
            by_skill.setdefault(it.meta["skill"], []).append(it)

    def measure(model) -> dict[str, Any]:
        return {"n_rows": n_items, **{sk: caption_fields(model, tok, its) for sk, its in sorted(by_skill.items())
                                      if mismatched_pairs(its, model.media_token_counts)}}

    todo = check_targets(cfg, runs, extra, runs_dir, (("B1", "B1 (own decoder)"), ("B", "B")))
    return _check_each(cfg, todo, ("fields",), measure, results_dir)


def vision_check(cfg: FusionConfig, n: int, runs: list[tuple[str, int]] | None = None,
                 extra: dict[str, Path] | None = None, runs_dir: Path | None = None,
                 results_dir: Path | None = None) -> dict[str, Any]:
    """Linear probes of the vision tokens (:func:`k25mini.pretrain.diagnose.vision_probe`, ``n`` single-object
    scenes) for the untrained tower (A's checkpoint: the ViT there is still its initialisation), B1, B, the finished
    joint runs of ``cfg`` (``runs``: (schedule, seed) pairs, default all) and ``extra`` checkpoints. Merged into the
    diagnostics JSON under ``vision_probe[name]`` and returned."""
    from k25mini.pretrain.diagnose import vision_probe

    todo = check_targets(cfg, runs, extra, runs_dir, (("A", "untrained (A)"), ("B1", "B1"), ("B", "B")))
    return _check_each(cfg, todo, ("vision_probe",), lambda m: {"n": n, **vision_probe(m, n, seed=cfg.world_seed)},
                       results_dir)


def blind_check(cfg: FusionConfig, results_dir: Path | None = None) -> dict[str, Any]:
    """Each suite's blind baseline on ``cfg``'s eval items (the best constant answer per kind of question,
    :func:`k25mini.pretrain.diagnose.blind_baseline`), merged into the diagnostics JSON under ``best_constant``
    with the config key; returns the file's content."""
    from k25mini.pretrain.diagnose import blind_baseline

    path = diagnostics_path(cfg.scale, results_dir)
    row = {"config_key": cfg.key(), **{s: blind_baseline(items) for s, items in eval_sets(cfg).items()}}
    cur = (read_json(path) or {})
    cur["best_constant"] = row
    return save_diagnostics(path, cur)


#: vision-only training mixes of :func:`vision_budget_check`: the joint stage's whole vision mix, and the corpora
#: that train each vision suite alone (VisKnow, VisReason, OCR)
BUDGET_MIXES: dict[str, tuple[str, ...]] = {"all": VISION_CORPORA, "know": ("vis_knowledge", "interleaved"),
                                            "reason": ("vis_reasoning", "charts", "video"), "ocr": ("ocr",)}


def vision_budget_check(cfg: FusionConfig, steps: tuple[int, ...], mixes: tuple[str, ...] = ("all", "reason"),
                        seeds: tuple[int, ...] = (0,), runs_dir: Path | None = None,
                        results_dir: Path | None = None) -> dict[str, Any]:
    """How much vision data does the model need? From the ViT-stage checkpoint (B) of ``cfg``, train on image-text
    documents only (no text stream: rows packed whole and padded, as the ViT stage) for each of ``steps`` with
    each of ``mixes`` (:data:`BUDGET_MIXES`) and data ``seeds``, at the joint stage's learning rate, then score the
    three held-out vision suites as the ablation does (greedy, per skill too). ``tokens`` is the number of
    document tokens trained on (padding excluded), to set beside a joint run's vision budget. Each row is merged
    into the diagnostics JSON under ``vision_budget["<mix>-<steps>-s<seed>"]`` as soon as it is measured, with
    the reference row ``"B1 (own decoder)"`` (two-step ViT stage: B1's ViT read by the caption decoder it was
    trained with, on the ViT stage's tokens), and ``best_constant[suite]``: the blind baseline of each suite (the best
    constant answer per kind of question, :func:`k25mini.pretrain.diagnose.blind_baseline`). Returns the file's
    content. The trained weights are not kept."""
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"steps must be a non-empty sequence of ints >= 1, got {steps!r}")
    if not mixes or any(m not in BUDGET_MIXES for m in mixes):
        raise ValueError(f"mixes must name mixes from {sorted(BUDGET_MIXES)}, got {mixes!r}")
    if not seeds or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of ints >= 0, got {seeds!r}")
    b = stage_vit(cfg, runs_dir)
    world, tok = World(cfg.world_seed, scale=cfg.scale), Tokenizer()
    evals = eval_sets(cfg)
    path = diagnostics_path(cfg.scale, results_dir)
    out = (read_json(path) or {})

    def score(model) -> dict[str, Any]:
        final, by_skill = score_suites(model, tok, evals, cfg.max_new_tokens, VISION_SUITES)
        return {"final": final, "final_by_skill": by_skill}

    def save(name: str, row: dict[str, Any]) -> dict[str, Any]:
        cur = (read_json(path) or {})  # re-read: other checks may write
        cur.setdefault("vision_budget", {})[name] = row
        return save_diagnostics(path, cur)

    blind_check(cfg, results_dir)
    old_b1 = out.get("vision_budget", {}).get("B1 (own decoder)", {})
    # reference: B1 read by its own caption decoder (trained on ViT-stage rows); scored once per B1 checkpoint
    if cfg.vit_align == "decoder" and old_b1.get("stage_key") != cfg.stage_key("B1"):
        t0 = time.perf_counter()
        model = new_model(cfg, cfg.stage_seed)
        load_weights(model, stage_dir(cfg, "B1", runs_dir))
        packed = vit_docs(cfg, world, tok, model.media_token_counts, cfg.vit_steps, "B")
        out = save("B1 (own decoder)", {"mix": "B1", "corpora": list(VIT_CORPORA), "steps": cfg.vit_steps,
                                        "seed": cfg.stage_seed, "stage_key": cfg.stage_key("B1"), "lr": cfg.vit_lr,
                                        "tokens": int(sum(s.vision_tokens for s in packed)), **score(model),
                                        "timing_s": time.perf_counter() - t0})
    for mix in mixes:
        for seed in seeds:
            for n in steps:
                t0 = time.perf_counter()
                model = new_model(cfg, seed)
                load_weights(model, b)
                docs = doc_stream(world, BUDGET_MIXES[mix], tok, model.media_token_counts, seed, max_len=cfg.seq_len,
                                  tag=f"budget-{mix}")
                packed = pack_vision_only(docs, n, cfg.rows, cfg.seq_len, tok.pad_id, tok.media_pad_id)
                with tempfile.TemporaryDirectory() as scratch:
                    tr = Trainer(model, lm_loss, lambda i, p=packed: batch_from(p[i]),
                                 train_config(cfg, n, cfg.joint_lr, seed, Path(scratch)))
                    tr.fit()
                row: dict[str, Any] = {"mix": mix, "corpora": list(BUDGET_MIXES[mix]), "steps": n, "seed": seed,
                                       "stage_key": cfg.stage_key("B"), "lr": cfg.joint_lr,
                                       "tokens": int(sum(s.vision_tokens for s in packed)), **score(model)}
                row["timing_s"] = time.perf_counter() - t0
                out = save(f"{mix}-{n}-s{seed}", row)
    return out

