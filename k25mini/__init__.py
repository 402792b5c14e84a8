"""k25mini: an educational, from-scratch reproduction of Kimi K2.5 (arXiv 2602.02276).

Layering (one way; docs/layout.md, checked by tests/test_import_graph.py): ``kernels`` <- components
(``k25mini.world``, ``.data``, ``.model``, ``.vision``, ``.train``, ``.rl``, ``.agents``, ...) <-
``k25mini.experiments`` <- ``k25mini.speedrun``/``k25mini.report`` <- notebooks.
"""

__version__ = "0.1.0"
