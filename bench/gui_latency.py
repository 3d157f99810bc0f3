"""How long is napari's GUI thread blocked while spgpt embeds a slide in the background?

A QTimer on the GUI thread ticks every 10 ms while the Embed & domains widget embeds the sample
slide (1,481 spots) in its worker thread. A tick that arrives late means the event loop could not
run (the GUI thread was blocked, e.g. waiting for the GIL); the *stall* of a tick is its delay
beyond the 10 ms interval. Stalls are attributed to the job phase the widget was in (from the
core's progress reports): model loading, embedding, domains, UMAP.

Run (Xvfb is needed for napari; pytest-xvfb does it in tests)::

    xvfb-run -a python bench/gui_latency.py [--model random:small] [--repeats 1]

The GUI test ``tests/gui/test_latency.py`` runs the same measurement with the tiny model and
asserts the embedding phase never stalls the GUI for more than 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

TICK_MS = 10


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


def _wait_with_events(predicate, timeout_s):
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > end:
            raise TimeoutError("job did not finish")
        app.processEvents()
        time.sleep(0.002)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:small", help="model spec (default: %(default)s)")
    p.add_argument("--umap", action="store_true", help="also compute the UMAP (numba JIT holds the GIL)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--write", action="store_true", help="write the GUI latency section of BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("SPGPT_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "spgpt"))
    import napari

    results = []
    for _ in range(args.repeats):
        viewer = napari.Viewer(show=True)
        viewer.open_sample("spgpt", "visium_sample")
        results.append(measure(viewer, _wait_with_events, model=args.model, umap=args.umap))
        viewer.close()
    print(json.dumps(results, indent=1))
    if args.write:
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        write_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "gui", render(results, argv))
    return 0


def render(results: list[dict], argv=None) -> str:
    """Markdown: the worst stall of each phase over all repeats."""
    import platform

    import torch

    cmd = "xvfb-run -a python bench/gui_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["## napari GUI responsiveness while embedding", "",
             f"`{cmd}` on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({time.strftime('%Y-%m-%d')}). The Embed & domains widget runs on the generated sample slide "
             f"({results[0]['n_spots']:,} spots, model `{results[0]['model']}`) in its thread worker while a "
             f"{TICK_MS} ms QTimer ticks on the GUI thread; a stall is a tick's delay beyond {TICK_MS} ms, i.e. "
             "time the GUI could not react. Worst over "
             f"{len(results)} run(s); wall time {', '.join(str(r['wall_s']) for r in results)} s.", "",
             "| phase | ticks | median stall ms | p99 stall ms | max stall ms | stalls > 100 ms |",
             "|---|---|---|---|---|---|"]
    phases: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        for name, st in r["phases"].items():
            phases[name].append(st)
    for name, sts in phases.items():
        lines.append(f"| {name} | {sum(s['ticks'] for s in sts)} | {max(s['median_stall_ms'] for s in sts)} | "
                     f"{max(s['p99_stall_ms'] for s in sts)} | {max(s['max_stall_ms'] for s in sts)} | "
                     f"{sum(s['stalls_over_100ms'] for s in sts)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
