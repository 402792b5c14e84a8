"""``LivePlot``: a training-curve figure that redraws in place in Jupyter and stays silent elsewhere.

Use it as a Trainer callback (``Trainer(..., callbacks=[LivePlot()])``) or by hand (``plot.add(step, loss=...)``
then ``plot.draw()``). In a notebook the figure is shown once through an IPython display handle and updated in
place (``update_display``), so a tqdm bar in the same cell is not wiped the way ``clear_output`` would wipe
it. Headless (scripts, tests, CI) nothing is displayed: the data are kept and :meth:`figure` still renders,
e.g. to save a PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["LivePlot", "in_notebook"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (including nbconvert / nbval execution)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class LivePlot:
    """Train curves (``train_keys``, default loss) on the left, eval metrics on the right.

    ``every``: redraw after this many train records (drawing a PNG costs ~0.1 s). ``eval_keys=None`` plots
    every numeric eval metric. ``log_y``: log-scale the loss axis. ``figsize`` is fixed, as the notebooks ask.
    """

    def __init__(
        self,
        train_keys: Sequence[str] = ("loss",),
        eval_keys: Sequence[str] | None = None,
        every: int = 1,
        figsize: tuple[float, float] = (9.0, 3.2),
        log_y: bool = False,
        title: str | None = None,
        display: bool | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.train_keys, self.eval_keys = tuple(train_keys), None if eval_keys is None else tuple(eval_keys)
        self.every, self.figsize, self.log_y, self.title = every, figsize, log_y, title
        self.display = in_notebook() if display is None else display
        self.train: dict[str, list[tuple[int, float]]] = {k: [] for k in self.train_keys}
        self.eval: dict[str, list[tuple[int, float]]] = {}
        self._handle: Any = None
        self._n = 0

    # ------------------------------------------------------------------ data
    def add(self, step: int, split: str = "train", **values: float) -> None:
        """Record values at ``step``; ``split`` is "train" or "eval"."""
        for k, v in values.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                continue
            if split == "train":
                if k in self.train:
                    self.train[k].append((step, float(v)))
            elif self.eval_keys is None or k in self.eval_keys:
                self.eval.setdefault(k, []).append((step, float(v)))

    # ------------------------------------------------------------------ callback interface
    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        self.add(record["step"], "train", **{k: v for k, v in record.items() if k not in ("step", "split")})
        self._n += 1
        if self._n % self.every == 0:
            self.draw()

    def on_eval(self, trainer: Any, record: dict[str, Any]) -> None:
        self.add(record["step"], "eval", **{k: v for k, v in record.items() if k not in ("step", "split")})
        self.draw()

    def on_train_end(self, trainer: Any) -> None:
        self.draw()

    # ------------------------------------------------------------------ drawing
    def figure(self):  # -> matplotlib.figure.Figure
        """A fresh figure of the current data (not registered with pyplot, so it never auto-displays)."""
        from matplotlib.figure import Figure

        has_eval = bool(self.eval)
        fig = Figure(figsize=self.figsize, layout="constrained")
        axes = fig.subplots(1, 2 if has_eval else 1, squeeze=False)[0]
        ax = axes[0]
        for k, pts in self.train.items():
            if pts:
                ax.plot(*zip(*pts), label=k)
        ax.set_xlabel("step")
        ax.set_title(self.title or "train")
        if self.log_y:
            ax.set_yscale("log")
        if any(self.train.values()):
            ax.legend(loc="upper right", fontsize=8)
        if has_eval:
            ax2 = axes[1]
            for k, pts in self.eval.items():
                ax2.plot(*zip(*pts), marker="o", ms=3, label=k)
            ax2.set_xlabel("step")
            ax2.set_title("eval")
            ax2.legend(loc="best", fontsize=8)
        return fig

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def draw(self) -> None:
        """Show or refresh the figure in the notebook; no-op headless."""
        if not self.display:
            return
        from IPython.display import Image, display

        img = Image(data=self.png(), format="png")
        if self._handle is None:
            self._handle = display(img, display_id=True)
        else:
            self._handle.update(img)
