"""The chapters' experiments: one sub-package per chapter, the only code that writes results/.

* :mod:`.results` - results I/O (repository root, atomic JSON, the schema and code version);
* :mod:`.registry` - the list of experiments that ``make speedrun``, ``make reproduce``,
  ``python -m k25mini.report`` and the notebooks use;
* :mod:`.stage` - what a speedrun stage is;
* ``ch00_world``, ``ch05_fusion``, ``ch08_swarm`` - the chapters' experiments.

Components (world, data, vision, model, optim, train, rl, agents, swarm, pretrain) never import this package.
"""
