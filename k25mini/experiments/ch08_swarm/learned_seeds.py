"""World seeds of the learned (model-written) swarm, fixed before any learned model was evaluated (issue #18,
DESIGN §8): training worlds, one development world for probes and design choices, and the final evaluation
worlds, which no choice may look at. They are disjoint (tested in tests/swarm/test_written.py).

Declared on 2026-12-04, when only the development world (7) had been used, by the probes of
``tools/ch08_written_probe.py`` (docs/swarm_learned.md). The old chapter 08 experiment keeps its own seeds.
"""

from __future__ import annotations

#: warm-start and RL worlds (the probes use 100 .. 100 + n - 1)
TRAIN_WORLD_SEEDS: range = range(100, 2100)
#: the one world every probe and design choice is scored on
DEV_WORLD_SEEDS: tuple[int, ...] = (7,)
#: final numbers only; chosen before any learned model existed, never used for a choice
EVAL_WORLD_SEEDS: tuple[int, ...] = (9001, 9002, 9003)
