"""Benchmark protocol helpers: stratified cell splits, gene folds, resource measurement, and the protocol
files of bench/generalize.py (which slides, where they are, where the results go, checked up front)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def split_cells(labels: pd.Series, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split of cells (positions) into two parts, ``fraction`` of each label in the first."""
    rng = np.random.default_rng(seed)
    lab = labels.astype(str).to_numpy()
    first = []
    for t in sorted(set(lab)):
        idx = rng.permutation(np.flatnonzero(lab == t))
        first.append(idx[: int(round(fraction * len(idx)))])
    a = np.sort(np.concatenate(first))
    b = np.setdiff1d(np.arange(len(lab)), a)
    return a, b


def gene_folds(genes, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Random partition of ``genes`` into ``n_folds`` held-out sets (leave-genes-out cross-validation)."""
    rng = np.random.default_rng(seed)
    g = np.array(list(genes), dtype=object)[rng.permutation(len(genes))]
    return [list(map(str, part)) for part in np.array_split(g, n_folds)]


class _Sampler:
    """Peak resident memory of this process, sampled every 20 ms on a thread (psutil)."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


@contextmanager
def measure(record: dict):
    """Fill ``record`` with wall seconds, CPU seconds, peak RSS and the peak RSS increase (MB) of the block."""
    t0, c0 = time.perf_counter(), time.process_time()
    with _Sampler() as s:
        yield record
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["cpu_seconds"] = round(time.process_time() - c0, 2)
    record["peak_rss_mb"] = round(s.peak / 2**20, 1)
    record["peak_increase_mb"] = round((s.peak - s.start) / 2**20, 1)


# ------------------------------------------------------------------------------ protocol files

BENCH = Path(__file__).resolve().parent
SHIPPED = BENCH / "protocols" / "unseen_tissue.yaml"
SHARED_DATA = BENCH.parents[1] / "shared" / "data"
#: the fixed settings a protocol file may leave out; they are the shipped protocol's (baselines never tuned)
INHERITED = ("seeds", "ignore_labels", "baselines", "candidates", "integration_candidates")
CASE_KINDS = {"deconvolution": ("pseudo_spots", "reference_mixtures"), "imputation": ("pseudo_spots", "pair")}


class ProtocolError(SystemExit):
    """A protocol file that cannot run, found before any slide is embedded (the message lists every problem)."""


@dataclass
class Protocol:
    """A protocol file and where its slides, results and caches are.

    ``spec`` is the YAML with the settings it leaves out taken from the shipped protocol (``INHERITED``).
    Slide paths are relative to ``data`` unless absolute. The shipped protocol writes to bench/results and
    bench/.cache; any other file to bench/results/protocols/<its name>/ (or ``out``), so another set of
    slides never mixes with, or overwrites, the shipped results.
    """

    file: Path
    spec: dict
    data: Path
    results: Path
    cache: Path

    @property
    def shipped(self) -> bool:
        return self.file == SHIPPED

    def path(self, rel: str) -> Path:
        p = Path(str(rel)).expanduser()
        return p if p.is_absolute() else self.data / p

    def check(self, family: str, set_name: str) -> None:
        """Every slide of the run exists and has what the family reads (label column, coordinates), else
        one error naming every problem and what to do."""
        problems = _problems(self, family, set_name)
        if problems:
            raise ProtocolError(f"protocol {self.file} cannot run --family {family} --set {set_name}:\n  - "
                                + "\n  - ".join(problems) + f"\n(slide paths are relative to {self.data}; "
                                "change it with --data or the file's data_root)")


def load_protocol(file: str | Path | None = None, data: str | Path | None = None,
                  out: str | Path | None = None) -> Protocol:
    import yaml

    file = Path(file).expanduser().resolve() if file else SHIPPED
    if not file.exists():
        raise ProtocolError(f"no protocol file {file}; pass a YAML laid out as {SHIPPED}")
    try:
        own = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProtocolError(f"{file} is not valid YAML: {e}") from None
    if not isinstance(own, dict):
        raise ProtocolError(f"{file} must hold a mapping (domains:, integration:, ...), not {type(own).__name__}")
    base = yaml.safe_load(SHIPPED.read_text())
    spec = {**{k: base[k] for k in INHERITED}, **own}
    if data is None:
        data = file.parent / own["data_root"] if own.get("data_root") else SHARED_DATA
    if out is None:
        out = BENCH / "results" if file == SHIPPED else BENCH / "results" / "protocols" / file.stem
    out = Path(out).expanduser()
    cache = BENCH / ".cache" if file == SHIPPED else out / "cache"
    return Protocol(file=file, spec=spec, data=Path(data).expanduser().resolve(), results=out, cache=cache)


def read(path: Path, backed: bool = False):
    """A protocol slide: .h5ad, SpatialData .zarr or an instrument's folder (``spgpt_core.io.read_slide``)."""
    from spgpt_core.io import read_slide

    return read_slide(path, backed=backed and path.suffix == ".h5ad")


def _columns(path: Path) -> tuple[list[str], bool]:
    """obs columns of a slide and whether it has coordinates, reading as little as the format allows."""
    from spgpt_core.io import OBS_COORDINATE_PAIRS

    a = read(path, backed=True)
    try:
        cols = list(a.obs.columns)
        return cols, "spatial" in a.obsm or any(x in cols and y in cols for x, y in OBS_COORDINATE_PAIRS)
    finally:
        if a.isbacked:
            a.file.close()


def _problems(p: Protocol, family: str, set_name: str) -> list[str]:
    out = []

    def slide(where: str, rel, label: str | None = None, coords: bool = False):
        if not rel:
            out.append(f"{where}: no path")
            return
        path = p.path(rel)
        if not path.exists():
            out.append(f"{where}: {path} does not exist")
            return
        try:
            cols, has_xy = _columns(path)
        except Exception as e:  # noqa: BLE001 - any unreadable slide is reported the same way
            out.append(f"{where}: {path} cannot be read ({type(e).__name__}: {e})")
            return
        if label is not None and label not in cols:
            out.append(f"{where}: {path.name} has no obs column {label!r} (it has: {', '.join(cols) or 'none'})")
        if coords and not has_xy:
            out.append(f"{where}: {path.name} has no coordinates (obsm['spatial'] or an obs pair such as x, y)")

    def need(where: str, entry: dict, keys: tuple[str, ...]) -> bool:
        missing = [k for k in keys if not entry.get(k)]
        if missing:
            out.append(f"{where}: missing {', '.join(missing)} (needs {', '.join(keys)})")
        return not missing

    spec = p.spec
    section = spec.get("domains") or {}
    if family == "domains":
        entries = section.get(set_name) or []
        if not entries:
            out.append(f"no slides under `domains: {set_name}:`")
        for i, e in enumerate(entries):
            where = f"domains {set_name} #{i + 1} ({e.get('name', 'no name')})"
            if need(where, e, ("name", "path", "label", "k")):
                if not isinstance(e["k"], int) or e["k"] < 2:
                    out.append(f"{where}: k={e['k']!r} must be a whole number of domains >= 2")
                slide(where, e["path"], e["label"], coords=True)
    elif family == "integration":
        known = {e.get("name"): e for s in ("dev", "test") for e in section.get(s) or []}
        groups = (spec.get("integration") or {}).get(set_name) or []
        if not groups:
            out.append(f"no slide groups under `integration: {set_name}:`")
        for g in groups:
            unknown = [n for n in g if n not in known]
            if unknown:
                out.append(f"integration group {g}: {', '.join(unknown)} not among the slides under domains: "
                           "(groups name slides listed there)")
            elif len(g) < 2:
                out.append(f"integration group {g}: needs 2 slides or more")
            else:
                for n in g:
                    if need(f"integration slide {n}", known[n], ("path", "label")):
                        slide(f"integration slide {n}", known[n]["path"], known[n]["label"], coords=True)
    else:
        cases = ((spec.get(family) or {}).get("cases") or {}).get(set_name) or []
        if not cases:
            out.append(f"no cases under `{family}: cases: {set_name}:`")
        for i, c in enumerate(cases):
            where = f"{family} {set_name} #{i + 1} ({c.get('name', 'no name')})"
            kind = c.get("kind")
            if kind not in CASE_KINDS[family]:
                out.append(f"{where}: kind {kind!r}; use one of {', '.join(CASE_KINDS[family])}")
            elif kind == "pseudo_spots" and need(where, c, ("name", "path", "label")):
                slide(where, c["path"], c["label"])
            elif kind == "reference_mixtures" and need(where, c, ("name", "reference", "label")):
                slide(where, c["reference"], c["label"])
            elif kind == "pair" and need(where, c, ("name", "path", "reference")):
                slide(where, c["path"])
                slide(where, c["reference"])
    return out
