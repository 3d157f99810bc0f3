"""How long is napari's GUI thread blocked while spgpt embeds a slide in the background?

The Embed & domains widget embeds the sample slide (1,481 spots) in its worker thread while a
10 ms QTimer ticks on the GUI thread; the measurement itself is ``tests/helpers/gui_latency.py``,
shared with the GUI test ``tests/gui/test_latency.py`` (tiny model; asserts the embedding phase
never stalls the GUI for more than 0.5 s).

Run (Xvfb is needed for napari; pytest-xvfb does it in tests)::

    xvfb-run -a python bench/gui_latency.py [--model random:small] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.gui_latency import TICK_MS, measure  # noqa: E402


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
    p.add_argument("--write", action="store_true", help="write the report to bench/results/gui.md")
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
        sys.path.insert(0, str(ROOT / "bench"))
        from _report import write_report

        write_report("gui", render(results, argv))
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
