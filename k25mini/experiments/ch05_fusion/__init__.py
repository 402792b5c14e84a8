"""Chapter 05's experiment: early-fusion pre-training and the paper's Table 1 at toy scale.

* :mod:`.config` - :class:`FusionConfig`, per-scale values, run keys;
* :mod:`.stages` - text stage A, ViT stage B (B1 + B2), joint runs, the ablation grid, probe runs;
* :mod:`.evaluation` - held-out suites, scoring, the aggregated results file;
* :mod:`.checks` - diagnostics (image reliance, skills, perception, vision-token probes, blind baseline,
  vision budget);
* :mod:`.report` - the chapter's section of docs/reproduction.md;
* ``python -m k25mini.experiments.ch05_fusion`` - the command line.
"""

from k25mini.experiments.ch05_fusion.checks import (
    BUDGET_MIXES,
    VISION_SUITES,
    blind_check,
    diagnose,
    diagnostics_path,
    perception_check,
    skill_check,
    vision_budget_check,
    vision_check,
)
from k25mini.experiments.ch05_fusion.config import (
    TEXT_SUITES,
    VISION_DOCS_VERSION,
    VIT_CORPORA,
    VIT_SKILLS,
    FusionConfig,
    config_for,
)
from k25mini.experiments.ch05_fusion.evaluation import (
    EXPERIMENT,
    PACKAGE,
    aggregate,
    eval_sets,
    load_results,
    results_path,
    run_file,
    score_suites,
)
from k25mini.experiments.ch05_fusion.stages import (
    batch_from,
    lm_loss,
    pack_vision_only,
    packed_steps,
    run_ablation,
    run_joint,
    run_probe,
    stage_dir,
    stage_text,
    stage_vit,
)

__all__ = ["BUDGET_MIXES", "VISION_SUITES", "blind_check", "diagnose", "diagnostics_path", "perception_check",
           "skill_check", "vision_budget_check", "vision_check", "TEXT_SUITES", "VISION_DOCS_VERSION", "VIT_CORPORA",
           "VIT_SKILLS", "FusionConfig", "config_for", "EXPERIMENT", "PACKAGE", "aggregate", "eval_sets",
           "load_results", "results_path", "run_file", "score_suites", "batch_from", "lm_loss", "pack_vision_only",
           "packed_steps", "run_ablation", "run_joint", "run_probe", "stage_dir", "stage_text", "stage_vit"]
