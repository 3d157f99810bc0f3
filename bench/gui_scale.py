"""napari at 200k and 1M cells: open time and redraw time of each way of drawing every cell.

For each (representation, size) a fresh process opens a generated Xenium-like slide
(``bench/_xenium_like.py``: 300 genes, planted domains) in a shown napari viewer (1280 x 900 under
Xvfb, Mesa llvmpipe), adds a categorical overlay (the planted domains, as the Embed & domains widget
draws its result) and a continuous one (total counts, as proportions / imputed genes are drawn),
then redraws the canvas while panning, at full view and at 10x zoom. Representations:

* ``raster``: the plugin's default above ``_raster.RASTER_ABOVE`` cells: a Labels layer of cell ids
  for the slide, Labels of category codes / an Image of values for the overlays;
* ``points``: napari Points layers, one point per cell (the plugin's drawing for small slides);
* ``shapes``: napari Shapes, one square per cell (only at a smaller size: see --shapes-cells).

Timings per frame: ``frame`` is the whole canvas repaint as the user sees it (vispy draw, GL finish,
Qt's composition of the window, pending events); ``draw`` is vispy's part alone (paintGL + glFinish).
``baseline`` is the same frame with a single point in the viewer (the cost of napari's window
itself). ``open`` is reading the file, building the layers and the first frame; ``overlay`` is
adding / updating one result layer (the widgets' final GUI-thread step). Each result is appended to
the JSON as soon as it is measured; pairs already there are skipped (``--redo`` to measure again).

    xvfb-run -a -s "-screen 0 1600x1200x24" python bench/gui_scale.py \\
        --sizes 200000 1000000 --reps raster points --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT))


def _frames(viewer, n: int, zoom: float) -> dict:
    """Median / max ms of ``n`` redraws while panning by a few screen pixels, at ``zoom`` x the full view."""
    import numpy as np
    from qtpy.QtWidgets import QApplication
    from vispy.gloo import gl

    app = QApplication.instance()
    canvas = viewer.window._qt_viewer.canvas
    native = canvas.native
    draws: list[float] = []
    paint = type(native).paintGL

    def timed_paint(self=native):
        t = time.perf_counter()
        paint(self)
        gl.glFinish()
        draws.append(time.perf_counter() - t)

    native.paintGL = timed_paint

    def frame() -> float:
        t = time.perf_counter()
        native.repaint()
        gl.glFinish()
        app.processEvents()
        return time.perf_counter() - t

    viewer.reset_view()
    viewer.camera.zoom = viewer.camera.zoom * zoom
    app.processEvents()
    frame()
    center = np.asarray(viewer.camera.center, dtype=float)
    step = 3.0 / viewer.camera.zoom  # 3 screen pixels
    frames = []
    draws.clear()
    for i in range(n):
        c = center.copy()
        c[-2:] += step * (i % 2)
        viewer.camera.center = tuple(c)
        frames.append(frame())
    del native.paintGL
    ms = lambda a: [round(1000 * float(np.median(a)), 1), round(1000 * float(np.max(a)), 1)]  # noqa: E731
    return {"frame_median_ms": ms(frames)[0], "frame_max_ms": ms(frames)[1],
            "draw_median_ms": ms(draws)[0] if draws else None, "n": n}


def measure_one(rep: str, n_cells: int, frames: int, workdir: Path) -> dict:
    import napari
    import numpy as np
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from _xenium_like import xenium_like_path

    path = xenium_like_path(n_cells, workdir)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 900)
    app = QApplication.instance()
    out: dict = {"rep": rep, "n_cells": n_cells}
    viewer.add_points(np.zeros((1, 2)), size=1, name="probe")
    app.processEvents()
    out["baseline_full"] = _frames(viewer, frames, 1)
    viewer.layers.clear()
    app.processEvents()

    t0 = time.perf_counter()
    if rep == "shapes":
        from napari_spgpt._io import load_slide

        slide = load_slide(path, draw="points")
        t_read = time.perf_counter() - t0
        yx, d = slide.points_yx, slide.spot_diameter / 2
        squares = np.stack([yx + (-d, -d), yx + (-d, d), yx + (d, d), yx + (d, -d)], axis=1)
        codes = slide.adata.obs["domain"].cat.codes.to_numpy()
        colors = np.asarray(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"])[codes]
        viewer.add_shapes(list(squares), shape_type="rectangle", face_color=list(colors), edge_width=0,
                          name="cells")
    else:
        from napari_spgpt._io import load_slide
        from napari_spgpt._layers import slide_layer_tuples
        from napari_spgpt._reader import attach_sample_reference

        slide = load_slide(path, draw=rep)  # what File > Open does (draw='auto' picks raster above 10k)
        attach_sample_reference(slide)
        t_read = time.perf_counter() - t0
        for data, kwargs, layer_type in slide_layer_tuples(slide):
            getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    viewer.reset_view()
    app.processEvents()
    viewer.window._qt_viewer.canvas.native.repaint()
    app.processEvents()
    out["open_s"] = round(time.perf_counter() - t0, 2)
    out["read_s"] = round(t_read, 2)

    if rep != "shapes":
        from napari_spgpt._layers import categorical, categorical_colors, shown_per_cell, upsert_result

        adata = slide.adata
        dom = adata.obs["domain"]
        mapping = categorical_colors(dom.cat.categories, None)
        feats = pd.DataFrame({"spot": adata.obs_names.to_numpy(), "domain": categorical(dom.values)})
        t = time.perf_counter()
        layer = upsert_result(viewer, slide, "domains", feats, kind="domains", column="domain",
                              categorical_map=mapping)
        app.processEvents()
        out["overlay_add_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        upsert_result(viewer, slide, "domains", feats, kind="domains", column="domain", categorical_map=mapping)
        app.processEvents()
        out["overlay_update_s"] = round(time.perf_counter() - t, 2)
        shown = shown_per_cell(layer, slide)
        out["cells_shown"] = int((np.asarray(shown).astype(str) == dom.astype(str).to_numpy()).sum())
        total = np.asarray(adata.X.sum(axis=1)).ravel()
        t = time.perf_counter()
        upsert_result(viewer, slide, "total counts", pd.DataFrame({"spot": feats["spot"], "total": total}),
                      kind="expression", column="total", visible=False, colorbar=True)
        app.processEvents()
        out["continuous_add_s"] = round(time.perf_counter() - t, 2)
    out["full"] = _frames(viewer, frames, 1)
    out["zoom10"] = _frames(viewer, frames, 10)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    viewer.close()
    return out


def measure_draw(n_cells: int, workdir: Path) -> dict:
    """The Deconvolve widget's drawing alone: open the slide, deconvolve it in process (NNLS, generated
    5-type reference), then time ``render`` (the final layer update) twice, adding then updating its six
    layers: wall seconds and the GUI thread's CPU seconds (which other jobs on the machine barely change)."""
    import anndata as ad
    import napari
    from qtpy.QtWidgets import QApplication
    from scale import make_reference

    from _xenium_like import xenium_like_path
    from napari_spgpt._layers import slide_layers
    from spgpt_core import tl

    path = xenium_like_path(n_cells, workdir)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 900)
    app = QApplication.instance()
    viewer.open(str(path), plugin="spgpt")
    app.processEvents()
    slide = slide_layers(viewer)[0].metadata["spgpt_slide"]
    ref = ad.read_h5ad(make_reference(Path(workdir) / "reference.h5ad"))
    tl.deconvolve(slide.adata, ref, "cell_type", "default", method="nnls")
    _, w = viewer.window.add_plugin_dock_widget("spgpt", "Deconvolve")
    out = {"n_cells": n_cells, "widget": "deconvolve", "commit": subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()}
    for step in ("add", "update"):
        t, c = time.perf_counter(), time.thread_time()
        w.render(slide)
        app.processEvents()
        out[f"{step}_wall_s"] = round(time.perf_counter() - t, 2)
        out[f"{step}_gui_cpu_s"] = round(time.thread_time() - c, 2)
    viewer.close()
    return out


def measure_job(n_cells: int, workdir: Path, method: str = "kmeans", features: str = "expression",
                widget: str = "domains") -> dict:
    """Open the slide, run a widget's job while a 10 ms QTimer ticks on the GUI thread, time the drawing
    of the result, then cancel a second run once it computes. ``widget``: ``domains`` (Embed & domains with
    ``features`` and ``method``, no UMAP; its analysis in the child process) or ``deconvolve`` (the
    Deconvolve widget's default method with a generated reference of the slide's genes, in the worker)."""
    import napari
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(ROOT.parent / "tests"))
    from _xenium_like import xenium_like_path
    from helpers.gui_latency import Heartbeat, time_final_update

    from napari_spgpt._layers import slide_layers
    from spgpt_core import child

    path = xenium_like_path(n_cells, workdir)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 900)
    app = QApplication.instance()

    def wait(pred, timeout_s):
        end = time.perf_counter() + timeout_s
        while not pred():
            if time.perf_counter() > end:
                raise TimeoutError("job did not finish")
            app.processEvents()
            time.sleep(0.002)

    t0 = time.perf_counter()
    viewer.open(str(path), plugin="spgpt")
    app.processEvents()
    opened = time.perf_counter() - t0
    slide = slide_layers(viewer)[0].metadata["spgpt_slide"]
    if widget == "domains":
        _, w = viewer.window.add_plugin_dock_widget("spgpt", "Embed & domains")
        w.features.value, w.method.value, w.n_domains.value, w.umap.value = features, method, 5, False
    else:
        from scale import make_reference

        _, w = viewer.window.add_plugin_dock_widget("spgpt", "Deconvolve")
        w.reference.value = str(make_reference(Path(workdir) / "reference.h5ad"))
        app.processEvents()
        w.celltype_key.value = "cell_type"
    phase = {"now": "job"}
    drawing = time_final_update(w, phase, "_done" if widget == "domains" else "commit")
    statuses: list[str] = []
    w.controls.status.changed.connect(lambda v: statuses.append(str(v)))
    beat = Heartbeat(lambda: phase["now"])
    run_t0 = {"t": time.perf_counter()}
    # each stall over 50 ms with the step the widget reported and the seconds since Run, to find its cause
    beat.detail = lambda: (f"{phase['now']}: {(w.controls.last_progress or (0, 0, 'starting'))[2]} "
                           f"@{time.perf_counter() - run_t0['t']:.1f}s")
    wait(lambda: False if time.perf_counter() - t0 < opened + 1 else True, 5)
    beat.start()
    t = run_t0["t"] = time.perf_counter()
    w.run()
    wait(lambda: not w.controls.busy, 3600)
    job_s = time.perf_counter() - t
    beat.stop()
    if w.controls.last_error is not None:
        raise RuntimeError(getattr(w.controls.last_error, "child_traceback", str(w.controls.last_error)))
    from sklearn.metrics import adjusted_rand_score

    if widget == "domains":
        score = adjusted_rand_score(slide.adata.obs["domain"], slide.adata.obs["spgpt_domain"])
        w.n_domains.value = 4
        computing = "finding domains"
    else:  # the generated reference's types are not the slide's domains: nothing to score against
        score = None
        before = slide.adata.obsm["spgpt_proportions"].copy()
        runs = len(slide.adata.uns.get("spgpt_napari", {}))  # a commit records its run: NNLS ignores the seed
        w.seed.value = 1
        computing = "deconvolution"
    w.run()
    wait(lambda: (w.controls.last_progress or (0, 0, ""))[2].startswith(computing), 600)
    time.sleep(2.0)
    warm = child._warm["process"]
    t = time.perf_counter()
    w.controls.cancel()
    wait(lambda: not w.controls.busy, 60)
    cancel_s = time.perf_counter() - t
    if widget == "domains":
        unchanged = slide.adata.obs["spgpt_domain"].nunique() == 5 and not warm.alive
    else:
        unchanged = (bool(slide.adata.obsm["spgpt_proportions"].equals(before))
                     and len(slide.adata.uns.get("spgpt_napari", {})) == runs)
    ari = None if score is None else round(float(score), 3)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    out = {"n_cells": n_cells, "widget": widget, "commit": commit, "features": features, "method": method, "open_s": round(opened, 2),
           "job_s": round(job_s, 1), "drawing_s": [round(x, 2) for x in drawing], "ari": ari,
           "stalls": beat.summary(), "stalls_over_50ms": beat.big[:40], "cancel_s": round(cancel_s, 2),
           "cancel_left_state_unchanged": bool(unchanged), "status_samples": [s for s in statuses if "/s" in s][-3:],
           "peak_rss_gb_gui": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
           "peak_rss_gb_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2)}
    viewer.close()
    return out


def run(args) -> None:
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else []
    todo = [(r, args.shapes_cells if r == "shapes" else n) for r in args.reps for n in args.sizes]
    for rep, n in dict.fromkeys(todo):
        if not args.redo and any(d["rep"] == rep and d["n_cells"] == n for d in done):
            print(f"{rep} {n:,}: done already", flush=True)
            continue
        frames = args.frames if rep == "raster" or n <= 50_000 else max(3, args.frames // 4)
        cmd = [sys.executable, __file__, "--one", rep, str(n), "--frames", str(frames), "--workdir", args.workdir]
        t = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode != 0 or not line:
            result = {"rep": rep, "n_cells": n, "ok": False, "error": (res.stderr or res.stdout)[-1500:]}
        else:
            result = {**json.loads(line[-1][7:]), "ok": True, "wall_s": round(time.time() - t, 1)}
        done = [d for d in done if not (d["rep"] == rep and d["n_cells"] == n)] + [result]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=1))
        print(json.dumps(result), flush=True)
    if args.write:
        from _report import write_report

        write_report("gui_scale", render(done))


def render(results: list[dict]) -> str:
    lines = ["## napari at 200k and 1M cells: open and redraw time per representation", "",
             f"`xvfb-run -a -s \"-screen 0 1600x1200x24\" python bench/gui_scale.py` on {platform.machine()}, "
             f"{os.cpu_count()} cores (shared with other jobs), Mesa llvmpipe under Xvfb, window 1280 x 900, "
             f"{time.strftime('%Y-%m-%d')}. Generated Xenium-like slides (300 genes, 5 planted domains). "
             "Frame: whole canvas repaint while panning by 3 screen pixels (median / max over the frames); "
             "draw: vispy's share of it (paintGL + glFinish); baseline: the same with one point in the viewer. "
             "The slide layer and the domains overlay are both visible while redrawing.", "",
             "| representation | cells | open s | overlay add / update s | cells shown | frame full view ms "
             "(median / max) | draw full ms | frame 10x zoom ms | draw 10x ms | baseline frame ms | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda d: (d["rep"], d["n_cells"])):
        if not r.get("ok", True):
            lines.append(f"| {r['rep']} | {r['n_cells']:,} | failed: {r['error'][-200:]!r} |||||||||")
            continue
        f, z, b = r["full"], r["zoom10"], r["baseline_full"]
        overlay = (f"{r['overlay_add_s']} / {r['overlay_update_s']}" if "overlay_add_s" in r else "-")
        shown = f"{r['cells_shown']:,}" if "cells_shown" in r else "-"
        lines.append(f"| {r['rep']} | {r['n_cells']:,} | {r['open_s']} (read {r['read_s']}) | {overlay} | {shown} | "
                     f"{f['frame_median_ms']} / {f['frame_max_ms']} | {f['draw_median_ms']} | "
                     f"{z['frame_median_ms']} / {z['frame_max_ms']} | {z['draw_median_ms']} | "
                     f"{b['frame_median_ms']} | {r['peak_rss_gb']} |")
    jobs_path = RESULTS / "gui_jobs.json"
    jobs = json.loads(jobs_path.read_text()) if jobs_path.is_file() else []
    if jobs:
        lines += ["", "### While a job runs (`python bench/gui_scale.py --job N`)", "",
                  "`domains`: Embed & domains (domains from the expression, k-means, no UMAP) on the N-cell slide, "
                  "its analysis in the child process; `deconvolve` (`--widget deconvolve`): the Deconvolve widget's "
                  "default with a generated 5-type reference (NNLS at these sizes), in the worker thread. A 10 ms "
                  "QTimer ticks on the GUI thread (a stall is a tick's delay beyond 10 ms; the largest one's step "
                  "as the widget reported it). Drawing: the widget's GUI-thread step after the job (commit + layers "
                  "+ legend). Cancel: from the Cancel click, while the second run computes, to the widget idle "
                  "again. Score: ARI of the domains against the planted domains.", "",
                  "| widget | cells | open s | job s | max stall ms (step) | p99 stall ms | median stall ms | "
                  "stalls > 100 ms | drawing s | cancel s | state unchanged | score | peak RSS GB GUI / child | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for j in jobs:
            st = j["stalls"]["job"]
            big = [b for b in j.get("stalls_over_50ms", []) if b[0].startswith("job")]
            step = max(big, key=lambda b: b[1])[0].split(": ", 1)[-1].split(" @")[0] if big and ":" in big[0][0] else ""
            lines.append(f"| {j.get('widget', 'domains')} | {j['n_cells']:,} | {j['open_s']} | {j['job_s']} | "
                         f"{st['max_stall_ms']}{f' ({step})' if step else ''} | "
                         f"{st['p99_stall_ms']} | {st['median_stall_ms']} | {st['stalls_over_100ms']} | "
                         f"{j['drawing_s']} | {j['cancel_s']} | {j['cancel_left_state_unchanged']} | "
                         f"{'-' if j['ari'] is None else j['ari']} | "
                         f"{j['peak_rss_gb_gui']} / {j['peak_rss_gb_child']} | {j.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    p.add_argument("--reps", nargs="+", default=["raster", "points"], choices=["raster", "points", "shapes"])
    p.add_argument("--shapes-cells", type=int, default=20_000, help="cells for the shapes representation")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "spgpt", "bench"))
    p.add_argument("--out", default=str(RESULTS / "gui_scale.json"))
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--redo", action="store_true")
    p.add_argument("--write", action="store_true", help="write bench/results/gui_scale.md")
    p.add_argument("--one", nargs=2, metavar=("REP", "N"), help=argparse.SUPPRESS)
    p.add_argument("--job", type=int, metavar="N", help="measure GUI stalls, drawing and cancel while Embed & "
                   "domains runs on an N-cell slide; appends to bench/results/gui_jobs.json")
    p.add_argument("--draw", type=int, metavar="N", help="time the Deconvolve widget's drawing of its result "
                   "on an N-cell slide (adding, then updating its layers); prints JSON")
    p.add_argument("--method", default="kmeans")
    p.add_argument("--features", default="expression")
    p.add_argument("--widget", choices=["domains", "deconvolve"], default="domains",
                   help="--job: the widget whose job runs (default: %(default)s)")
    args = p.parse_args(argv)
    if args.draw:
        print(json.dumps(measure_draw(args.draw, Path(args.workdir))), flush=True)
        os._exit(0)
    if args.job:
        res = measure_job(args.job, Path(args.workdir), args.method, args.features, args.widget)
        print(json.dumps(res), flush=True)
        jobs = RESULTS / "gui_jobs.json"
        done = json.loads(jobs.read_text()) if jobs.is_file() else []
        jobs.write_text(json.dumps([*done, res], indent=1))
        sys.stdout.flush()
        os._exit(0)
    if args.one:
        res = measure_one(args.one[0], int(args.one[1]), args.frames, Path(args.workdir))
        print("RESULT " + json.dumps(res), flush=True)
        sys.stdout.flush()
        os._exit(0)  # skip interpreter finalisation (the Qt stack's none_dealloc abort, tests/gui/conftest.py)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
