"""Chapter 08's experiment: the Agent Swarm trained with PARL against a single agent (toy WideSearch).

* :mod:`.config` - :class:`ExperimentConfig` per scale, PARL variants, the paper's numbers;
* :mod:`.run` - one seed's training and evaluation, the multi-seed experiment and its results file;
* :mod:`.evaluation` - held-out episodes, per-seed checks, the summary with acceptance checks;
* :mod:`.report` - the chapter's section of docs/reproduction.md;
* ``python -m k25mini.experiments.ch08_swarm`` - the command line.
"""

from k25mini.experiments.ch08_swarm.config import EXPERIMENT, PACKAGE, PAPER, VARIANTS, ExperimentConfig, default_config
from k25mini.experiments.ch08_swarm.evaluation import MIN_FINISH_RATE, evaluate, seed_checks, summarize
from k25mini.experiments.ch08_swarm.report import (
    attempts_markdown,
    load_attempts,
    load_results,
    markdown_section,
    reproduction_markdown,
)
from k25mini.experiments.ch08_swarm.run import lm_from_checkpoint, results_path, run_experiment, run_seed

__all__ = ["EXPERIMENT", "PACKAGE", "PAPER", "VARIANTS", "ExperimentConfig", "default_config", "MIN_FINISH_RATE",
           "evaluate", "seed_checks", "summarize", "attempts_markdown", "load_attempts", "load_results",
           "markdown_section", "reproduction_markdown", "lm_from_checkpoint", "results_path", "run_experiment",
           "run_seed"]
