"""k25mini: an educational, from-scratch reproduction of Kimi K2.5 (arXiv 2602.02276).

Layering (one way): ``kernels`` <- ``k25mini.model``/``k25mini.vision`` <- ``k25mini.train``/
``k25mini.rl``/``k25mini.agents`` <- notebooks.
"""

__version__ = "0.1.0"
