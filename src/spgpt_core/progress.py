"""Progress reporting and cancellation shared by the CLI, the Python API and the napari plugin.

Long-running functions take ``progress: Progress | None``. They call ``progress.update(n)`` as work
completes and ``progress.check()`` between batches; ``check`` raises :class:`Cancelled` once
``cancel()`` was called (from another thread, e.g. a GUI Cancel button).
"""

from __future__ import annotations

import threading
from typing import Callable

from .errors import Cancelled


class Progress:
    """Counts finished work units out of a total and carries a cancel flag.

    ``callback(done, total, desc)`` is called on every update (in the worker's thread); the
    napari plugin forwards it to the GUI thread through a worker signal.
    """

    def __init__(self, callback: Callable[[int, int, str], None] | None = None):
        self.callback = callback
        self.total = 0
        self.done = 0
        self.desc = ""
        self._cancel = threading.Event()

    def start(self, total: int, desc: str = "", unit: str | None = None) -> None:
        """A new stage of ``total`` units (0: a stage without a count). ``unit`` names them where they
        are not the caller's default (e.g. Leiden runs within a job counted in cells)."""
        self.total, self.done, self.desc = int(total), 0, desc
        self._emit()

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        self._emit()

    def close(self) -> None:
        pass

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total, self.desc)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            # a stage without a count (total 0, e.g. 'finding domains') has no 'n of m' to report
            steps = f" after {self.done:,} of {self.total:,} steps" if self.total > 0 else ""
            raise Cancelled(f"{self.desc or 'work'} was cancelled{steps}")


class TqdmProgress(Progress):
    """A :class:`Progress` that draws a tqdm bar on stderr (the CLI's default)."""

    def __init__(self, disable: bool = False, unit: str = "it"):
        super().__init__()
        self._bar = None
        self._disable = disable
        self._unit = unit

    def start(self, total: int, desc: str = "", unit: str | None = None) -> None:
        from tqdm.auto import tqdm  # only the CLI draws a bar: the plugin and library callers never import tqdm

        self.close()
        super().start(total, desc, unit)
        # tqdm shows count, rate and ETA when the stage has a total; without one, its elapsed time
        self._bar = tqdm(total=total or None, desc=desc, unit=unit or self._unit, disable=self._disable,
                         dynamic_ncols=True, bar_format=None if total else "{desc}: {elapsed}")

    def update(self, n: int = 1) -> None:
        super().update(n)
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def ensure_progress(progress: Progress | None) -> Progress:
    """Return ``progress`` or a silent one, so callees never test for None."""
    return progress if progress is not None else Progress()
