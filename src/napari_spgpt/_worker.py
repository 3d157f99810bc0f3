"""Run / Cancel / progress for long jobs, shared by every widget.

A job is a function ``work(progress) -> result`` that calls ``spgpt_core`` with the given
:class:`spgpt_core.progress.Progress`. It runs in a napari thread worker; the core reports progress
from the worker thread through a Qt signal (queued to the GUI thread), the Cancel button calls
``progress.cancel()`` so the core stops at its next batch boundary, and the result is handed to
``on_done(result)`` on the GUI thread, the only place where layers are touched.

Errors: :class:`spgpt_core.errors.SpgptError` messages appear as napari notifications as they are
(they name the problem and the fix); a cancelled job is an info message; anything else is an error
notification with its traceback in the details. The viewer survives all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from magicgui.widgets import Container, Label, ProgressBar, PushButton, TextEdit
from napari.qt.threading import FunctionWorker, create_worker
from napari.utils import notifications
from qtpy.QtCore import QObject, Signal
from spgpt_core.errors import Cancelled, SpgptError
from spgpt_core.progress import Progress

log = logging.getLogger(__name__)

#: spgpt_core's messages name command-line flags; in the plugin the same setting is a widget control
GUI_WORDS = {
    "--reference-gene-col": "'Reference gene names' (this widget)",
    "--gene-col": "'Gene names' (Model widget)",
    "--reference-counts-layer": "the reference's counts layer",
    "--counts-layer": "'Counts' (Model widget)",
    "--n-clusters": "'Number of domains'",
    "--resolution": "'Resolution'",
    "--mapping-epochs": "'Mapping epochs'",
    "--n-top-genes": "'Most variable genes'",
    "--drop-empty": "'Leave out spots that express no model gene'",
    "--batch-size": "'Batch size'",
    "--device": "'Device' (Model widget)",
    "--model": "the Model widget",
}


def gui_wording(message: str) -> str:
    """A core message with its command-line flags replaced by the controls that set them."""
    for flag, control in GUI_WORDS.items():  # longer flags first: --reference-gene-col before --gene-col
        message = message.replace(f"pass {flag}", f"set {control}").replace(flag, control)
    return message


class _ProgressSignal(QObject):
    """Lives in the GUI thread; ``emit`` from the worker thread is queued to the GUI thread."""

    progress = Signal(int, int, str)


class _Failure:
    """An exception raised by the job, handed back as its result (see ``JobControls.start``)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Worker(FunctionWorker):
    """A napari FunctionWorker whose errors the widget reports itself (no duplicate traceback toast),
    and whose ``quit`` (e.g. from napari's task manager) cancels the spgpt job between batches."""

    spgpt_progress = None

    def _relay_error(self, exc: Exception) -> None:  # noqa: D401 - napari hook
        pass

    def quit(self) -> None:
        if self.spgpt_progress is not None:
            self.spgpt_progress.cancel()
        super().quit()


class JobControls(Container):
    """Run and Cancel buttons, a progress bar with the core's totals and a status line."""

    def __init__(self, run_text: str = "Run", tooltip: str | None = None):
        self.run_button = PushButton(text=run_text, tooltip=tooltip)
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="Stop the job now; the slide and its layers stay as they were")
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="")
        self.progress_bar.native.setTextVisible(True)
        self.progress_bar.native.setFormat("")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        # the whole message of the last error (toasts and the status line show its beginning)
        self.details = TextEdit(value="", visible=False)
        self.details.read_only = True
        self.details.native.setMaximumHeight(120)
        # room for three wrapped lines: a word-wrapped QLabel in a layout otherwise gets one line's height
        self.status.native.setMinimumHeight(3 * self.status.native.fontMetrics().lineSpacing() + 4)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        super().__init__(widgets=[buttons, self.progress_bar, self.status, self.details], labels=False)
        self.margins = (0, 0, 0, 0)
        self.cancel_button.clicked.connect(self.cancel)
        self._signal = _ProgressSignal()
        self._signal.progress.connect(self._on_progress)
        self.worker: _Worker | None = None
        self.progress = None
        self.last_progress: tuple[int, int, str] | None = None
        self.totals: dict[str, int] = {}  # total reported per stage of the last job
        self.last_error: BaseException | None = None
        self.last_result: Any = None
        self.elapsed: float | None = None
        self._slide = None
        self._on_done: Callable[[Any], None] | None = None
        self._what = "job"
        self._unchanged = ""
        self._t0 = 0.0
        self._stage: tuple[float, int] | None = None  # (time, count) when the current stage's reports began
        # Closing the widget (or the viewer) while a job runs cancels it at its next batch.
        running = self._running = {"progress": None}
        self.native.destroyed.connect(lambda *_: running["progress"] is not None and running["progress"].cancel())

    # -- state ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, work: Callable, *, on_done: Callable[[Any], None], slide=None, what: str = "job") -> bool:
        """Run ``work(progress)`` in a worker thread; ``on_done(result)`` on the GUI thread. False if busy."""
        if self.busy:
            return False
        if slide is not None and slide.busy:
            notifications.show_warning(f"'{slide.busy}' is still running on {slide.name}; wait for it or cancel it first.")
            return False
        emit = self._signal.progress.emit
        progress = Progress(callback=lambda done, total, desc: emit(int(done), int(total), str(desc)))
        self.progress = progress
        self._running["progress"] = progress
        self._on_done = on_done
        self._slide = slide
        self._what = what
        self._unchanged = "; the slide is unchanged" if slide is not None else ""
        if slide is not None:
            slide.busy = what
            slide.cancel_job = progress.cancel  # closing the slide cancels its job (_guard.py)
        self.last_error = None
        self.last_result = None
        self.last_progress = None
        self._stage = None
        self.details.value = ""
        self.details.visible = False
        self.totals = {}
        self.elapsed = None
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._set_indeterminate(f"{what}: starting")
        self._t0 = time.perf_counter()

        def job():
            # Exceptions come back as a value rather than through ``errored``: in napari 0.9.2 the
            # task-status slot that create_worker connects to ``errored`` takes the wrong number of
            # arguments and raises in the GUI thread.
            try:
                return work(progress)
            except Exception as e:  # noqa: BLE001 - every error is reported by _on_errored
                return _Failure(e)

        worker = create_worker(job, _worker_class=_Worker, _start_thread=False,
                               _connect={"returned": self._on_returned, "errored": self._on_errored,
                                         "finished": self._on_finished})
        worker.spgpt_progress = progress
        self.worker = worker
        worker.start()
        return True

    def cancel(self) -> None:
        if self.progress is not None and self.busy:
            self.progress.cancel()
            self.cancel_button.enabled = False
            self.status.value = "Cancelling..."

    # -- GUI-thread slots ------------------------------------------------------------------------

    def _set_indeterminate(self, text: str) -> None:
        self.progress_bar.native.setFormat("")
        self.progress_bar.native.setRange(0, 0)
        self.status.value = text

    def _on_progress(self, done: int, total: int, desc: str) -> None:
        now = time.perf_counter()
        last = self.last_progress
        if last is None or last[2] != desc or done < last[0] or self._stage is None:
            self._stage = (now, done)  # a new stage: its rate is counted from here
        self.last_progress = (done, total, desc)
        self.totals[desc] = total
        if not self.busy:
            return
        bar = self.progress_bar.native
        if total > 0:
            bar.setFormat("%v / %m")
            bar.setRange(0, total)
            bar.setValue(min(done, total))
            self.status.value = f"{desc}: {done:,} / {total:,}{rate_eta(done, total, *self._stage, now)}"
        else:
            bar.setRange(0, 0)
            self.status.value = f"{desc}... ({format_duration(now - self._stage[0])})"

    def _on_returned(self, result) -> None:
        _assert_main_thread()
        if isinstance(result, _Failure):
            self._on_errored(result.exc)
            return
        self.elapsed = time.perf_counter() - self._t0
        self.last_result = result
        freeze_long_lived_objects()
        self._release()
        self.status.value = f"Done in {self.elapsed:.1f} s."
        try:
            if self._on_done is not None:
                self._on_done(result)
        except Exception as e:  # noqa: BLE001 - showing results must never take the viewer down
            log.exception("showing the results failed")
            self.last_error = e
            notifications.show_error(f"spgpt could not show the results: {type(e).__name__}: {e}")
            self.status.value = f"Could not show the results: {e}"

    def _on_errored(self, exc: BaseException) -> None:

        _assert_main_thread()
        self.last_error = exc
        self._release()
        if isinstance(exc, Cancelled):
            # True by construction: a job writes into a scratch copy and only on_done commits it (_staging.py)
            stage = self.last_progress[2] if self.last_progress else self._what
            notifications.show_info(f"Cancelled {self._what} during '{stage}'; the slide and its layers are "
                                    "unchanged.")
            self.status.value = f"Cancelled during '{stage}'; the slide and its layers are as before."
        elif isinstance(exc, SpgptError):
            text = gui_wording(str(exc))
            notifications.show_error(text)
            self.status.value = f"Error (the whole message below{self._unchanged})."
            self._show_details(text)
        else:
            log.error("spgpt job failed", exc_info=exc)
            notifications.notification_manager.receive_error(type(exc), exc, exc.__traceback__)
            self.status.value = f"Unexpected error: {type(exc).__name__} (details below{self._unchanged})."
            self._show_details(f"{type(exc).__name__}: {exc}")

    def _show_details(self, text: str) -> None:
        self.details.value = text
        self.details.visible = True

    def _on_finished(self) -> None:
        self._release()
        self._running["progress"] = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        bar = self.progress_bar.native
        bar.setRange(0, 1)
        ok = self.last_error is None
        bar.setValue(1 if ok else 0)
        bar.setFormat("done" if ok else "")

    def _release(self) -> None:
        if self._slide is not None:
            self._slide.busy = None
            self._slide.cancel_job = None
            self._slide = None


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 05 s', '2 h 04 min'."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rate_eta(done: int, total: int, t_start: float, done_start: int, now: float) -> str:
    """', 1,234 /s, about 2 min 10 s left' once the stage has run a second and counted something."""
    elapsed, counted = now - t_start, done - done_start
    if elapsed < 1.0 or counted <= 0:
        return ""
    rate = counted / elapsed
    shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
    left = f", about {format_duration((total - done) / rate)} left" if total > done else ""
    return f" ({shown} /s{left})"


_frozen = {"done": False}


def freeze_long_lived_objects() -> None:
    """Once per process, after the first job imported the analysis stack: move every object alive now
    out of reach of Python's cyclic garbage collector (``gc.freeze``).

    With torch, scanpy and napari loaded a full collection walks millions of long-lived objects (module
    contents, mostly) and pauses every thread, the GUI's included, for about a second, whichever thread
    triggers it (measured in tests/gui/test_qc_view.py). After the freeze it walks only objects made
    since. The price: reference cycles among objects alive now are never collected once they die
    (ordinary reference counting still frees everything else), a one-off bounded by today's heap."""
    import gc
    import sys

    if not _frozen["done"] and "torch" in sys.modules:
        _frozen["done"] = True
        gc.freeze()


def _assert_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover - would be a bug
        raise RuntimeError("spgpt result handler called outside the GUI thread")
