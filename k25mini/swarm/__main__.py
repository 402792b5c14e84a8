"""``python -m k25mini.swarm [--recompute] [--workers N]``: the notebook-08 experiments from the command line."""

from k25mini.swarm.experiments import main

if __name__ == "__main__":
    raise SystemExit(main())
