"""How long napari's GUI thread stalls while the Embed & domains widget embeds a slide.

A QTimer on the GUI thread ticks every 10 ms while the widget embeds the slide in its worker
thread. A tick that arrives late means the event loop could not run (the GUI thread was blocked,
e.g. waiting for the GIL); the *stall* of a tick is its delay beyond the 10 ms interval. Stalls
are attributed to the job phase the widget was in (from the core's progress reports): model
loading, embedding, domains, UMAP.

Used by ``tests/gui/test_latency.py`` (tiny model, asserts) and ``bench/gui_latency.py``
(the benchmark that writes the GUI section of BENCHMARKS.md).
"""

from __future__ import annotations

import time
from collections import defaultdict

TICK_MS = 10


def time_final_update(widget, phase: dict, method: str = "_done") -> list[float]:
    """Wrap the widget's ``method`` (its final layer update on the GUI thread: ``_done``, or ``commit``
    for the mapping widgets): it sets ``phase["now"]`` to ``"drawing"`` and appends its duration in
    seconds to the returned list."""
    show, took = getattr(widget, method), []

    def timed(*args):
        phase["now"] = "drawing"
        t = time.perf_counter()
        result = show(*args)
        took.append(time.perf_counter() - t)
        return result

    setattr(widget, method, timed)
    return took


class Heartbeat:
    """Records the delay of every tick of a 10 ms QTimer, labelled with the current phase."""

    def __init__(self, phase_of):
        from qtpy.QtCore import QTimer

        self.phase_of = phase_of
        self.stalls: dict[str, list[float]] = defaultdict(list)
        self.big: list[tuple[str, float]] = []  # (where, stall ms) of stalls over 50 ms
        self.where = phase_of
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)

    def start(self):
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self):
        self._timer.stop()

    def _tick(self):
        now = time.perf_counter()
        gap = now - self._last
        self._last = now
        stall = max(0.0, gap - TICK_MS / 1000)
        self.stalls[self.phase_of()].append(stall)
        if stall > 0.05:
            self.big.append((self.detail(), round(stall * 1000, 1)))

    def detail(self) -> str:
        return self.phase_of()

    def summary(self) -> dict:
        import numpy as np

        out = {}
        for phase, s in self.stalls.items():
            a = np.asarray(s) * 1000
            out[phase] = {"ticks": int(a.size), "max_stall_ms": round(float(a.max()), 1),
                          "p99_stall_ms": round(float(np.percentile(a, 99)), 1),
                          "median_stall_ms": round(float(np.median(a)), 1),
                          "stalls_over_100ms": int((a > 100).sum())}
        return out


def phase_name(controls) -> str:
    if controls.last_progress is None:
        return "starting"
    desc = controls.last_progress[2]
    if desc.startswith("loading"):
        return "loading model"
    if desc.startswith("embedding"):
        return "embedding"
    if "domain" in desc:
        return "domains"
    return desc or "other"


def measure(viewer, qtbot_wait, *, model: str = "random:tiny", umap: bool = False, batch_size: int = 64,
            timeout_s: float = 600) -> dict:
    """Run Embed & domains on the slide already open in ``viewer`` and measure GUI stalls."""
    from napari_spgpt._state import get_state

    state = get_state(viewer)
    state.model, state.spec, state.device = None, model, "cpu"  # load inside the worker: that is measured too
    _, widget = viewer.window.add_plugin_dock_widget("spgpt", "Embed & domains")
    widget.features.value = "fused"  # embeds the slide: the stalls measured are the embedding's
    widget.n_domains.value = 5
    widget.umap.value = umap
    widget.batch_size.value = batch_size
    beat = Heartbeat(lambda: phase_name(widget.controls))
    beat.detail = lambda: str(widget.controls.last_progress)
    settle = time.perf_counter() + 1.0  # let the newly docked widget lay out and paint first
    qtbot_wait(lambda: time.perf_counter() > settle, 5)
    beat.start()
    t0 = time.perf_counter()
    widget.run()
    qtbot_wait(lambda: not widget.controls.busy, timeout_s)
    wall = time.perf_counter() - t0
    beat.stop()
    if widget.controls.last_error is not None:
        raise RuntimeError(f"embedding failed: {widget.controls.last_error}")
    return {"model": model, "n_spots": int(widget.slide.adata.n_obs), "wall_s": round(wall, 2),
            "phases": beat.summary(), "stalls_over_50ms": beat.big}
