"""Progress of long computations: one callback type for the whole library, and a terminal bar
that implements it for the command line.

    fit_layer(trajectory, layer, progress=lambda update: print(update.task, update.done, update.total))
    fits = fit_trajectory(trajectory, progress=TerminalProgress(unit="unit"))
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class ProgressUpdate:
    """`done` of `total` steps of `task` (e.g. "rnns.0.l0", "epoch 2/13"); `detail` is a short note
    to show beside it (e.g. "ppl 120.3"). `overall` is the fraction (0..1) of the whole computation
    done, where the one reporting knows it: a training run counts its epochs, the pruning pipeline
    its stages, a download its bytes; None otherwise."""

    task: str
    done: int
    total: int
    detail: str = ""
    overall: float | None = None


ProgressCallback = Callable[[ProgressUpdate], None]


class TerminalProgress:
    """A ProgressCallback drawing one tqdm bar per task on stderr, removed when the task is done.
    Draws nothing when stderr is not a terminal, so job logs hold no bar fragments."""

    def __init__(self, unit: str = "it"):
        self.unit = unit
        self._bar: tqdm | None = None
        self._task: str | None = None

    def __call__(self, update: ProgressUpdate) -> None:
        if not sys.stderr.isatty():
            return
        if self._bar is None or self._task != update.task:
            self.close()
            self._bar = tqdm(total=update.total, initial=update.done, desc=update.task, unit=self.unit, leave=False)
            self._task = update.task
        if update.detail and update.detail != self._bar.postfix:
            self._bar.set_postfix_str(update.detail, refresh=False)  # drawn with the next update
        self._bar.update(update.done - self._bar.n)
        if update.done >= update.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._task = None, None
