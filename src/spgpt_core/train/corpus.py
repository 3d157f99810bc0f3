"""A preprocessed on-disk training corpus built from many slides (Methods 4.1).

``build_corpus`` streams one slide at a time (and each slide in row chunks), so the corpus is never
in memory as a whole. Layout::

    corpus/
      corpus.json          slides, modalities, sizes, split, build parameters, versions
      gene_stats.csv       corpus-level mean of non-zero slide-normalised values per vocabulary gene
      slides/<slide_id>/
        indptr.npy         int64 (n_cells + 1)         CSR rows of kept cells
        genes.npy          int32 vocabulary ids        (kept genes only, per row)
        values.npy         float32 slide-normalised values (raw / slide non-zero mean)
        panel.npy          int32 vocabulary ids measured on this slide (for non-expressed query genes)
        coords.npy         float64 (n_cells, 2)        only when the slide has coordinates
        split.npy          uint8: 0 = train, 1 = validation

Arrays are opened memory-mapped (``np.load(mmap_mode="r")``) by :class:`Corpus`.

Quality control per slide (paper): genes expressed in < 0.03% of cells are dropped, only genes in
the vocabulary are kept, cells need >= 10 expressed genes (imaging) or >= 50 (sequencing). The
corpus-level gene means of the second normalisation level are computed over all slides together.

Split: a reproducible ~0.3% of cells are held out for validation as whole spatial patches (a
centre cell and its ``patch_size - 1`` nearest neighbours), so validation patches are spatially
coherent and never leak into training patches. Slides without coordinates hold out random cells.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.spatial import cKDTree

from ..atomic import atomic_path
from ..checkpoint.pretrained import versions
from ..errors import InputError
from ..io import get_coordinates, iter_row_chunks, read_slide
from ..pp.counts import with_counts
from ..pp.modality import resolve_modality
from ..pp.tokenize import GeneStats, SlideStats, quality_masks
from ..pp.vocab import GeneVocab, resolve_genes
from ..progress import Progress, ensure_progress

log = logging.getLogger(__name__)

CORPUS_FORMAT = 1


@dataclass
class SlideSpec:
    """One input slide: path plus optional per-slide settings (from the command line or a YAML list)."""

    path: str
    modality: str | None = None
    gene_col: str | None = None
    slide_id: str | None = None
    table: str | None = None
    counts_layer: str | None = None  # layer with the raw counts when X is normalised ('raw': adata.raw)
    adata: object = None  # an in-memory AnnData instead of reading ``path`` (fine-tuning from the API)


def read_slide_list(items: list[str]) -> list[SlideSpec]:
    """Slides from paths and/or YAML files (a list of paths or of {path, modality, gene_col, slide_id, table,
    counts_layer})."""
    specs: list[SlideSpec] = []
    for item in items:
        p = Path(item)
        if p.suffix in (".yaml", ".yml"):
            try:
                entries = yaml.safe_load(p.read_text())
            except (OSError, yaml.YAMLError) as e:
                raise InputError(f"cannot read slide list {p}: {e}") from e
            entries = entries.get("slides", entries) if isinstance(entries, dict) else entries
            if not isinstance(entries, list):
                raise InputError(f"{p} must hold a list of slides (paths or {{path: ..., modality: ...}} entries)")
            for e in entries:
                if isinstance(e, str):
                    e = {"path": e}
                unknown = set(e) - {"path", "modality", "gene_col", "slide_id", "table", "counts_layer"}
                if unknown or "path" not in e:
                    raise InputError(f"slide entry {e} in {p}: needs 'path'; allowed keys path, modality, gene_col, "
                                     f"slide_id, table, counts_layer (unknown: {sorted(unknown)})")
                path = Path(e["path"])
                if not path.is_absolute():
                    path = p.parent / path
                specs.append(SlideSpec(**{**e, "path": str(path)}))
        else:
            specs.append(SlideSpec(path=item))
    if not specs:
        raise InputError("no slides given; pass .h5ad / .zarr paths or a YAML list of slides")
    return specs


def _slide_id(spec: SlideSpec, taken: set[str]) -> str:
    base = spec.slide_id or Path(spec.path).name.removesuffix(".h5ad").removesuffix(".zarr")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "slide"
    sid, k = base, 1
    while sid in taken:
        k += 1
        sid = f"{base}_{k}"
    taken.add(sid)
    return sid


def _validation_mask(coords: np.ndarray | None, n: int, patch_size: int, frac: float, rng) -> np.ndarray:
    """Hold out ~frac of the cells as whole spatial patches (stochastic rounding of the patch count)."""
    split = np.zeros(n, dtype=np.uint8)
    if frac <= 0 or n < 2:
        return split
    n_cells = frac * n
    if coords is None:
        k = int(np.floor(n_cells + rng.random()))
        split[rng.choice(n, size=min(k, n - 1), replace=False)] = 1
        return split
    n_patches = int(np.floor(n_cells / patch_size + rng.random()))
    if n_patches == 0:
        return split
    tree = cKDTree(coords)
    centres = rng.choice(n, size=min(n_patches, n), replace=False)
    _, idx = tree.query(coords[centres], k=min(patch_size, n))
    split[np.asarray(idx).ravel()] = 1
    if split.all():
        split[rng.integers(n)] = 0
    return split


def build_corpus(slides: list[SlideSpec], out: str | Path, *, vocab=None, val_fraction: float = 0.003,
                 patch_size: int = 16, seed: int = 0, overwrite: bool = False,
                 progress: Progress | None = None) -> Path:
    """Preprocess slides into an on-disk corpus (see the module docstring). Returns the folder."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite or choose another --out")
    if not 0 <= val_fraction < 0.5:
        raise InputError(f"val_fraction={val_fraction} must be in [0, 0.5)")
    vocab = vocab or GeneVocab.default()
    progress = ensure_progress(progress)
    rng = np.random.default_rng(seed)
    gsum = np.zeros(len(vocab))
    gcnt = np.zeros(len(vocab), dtype=np.int64)
    entries, taken, skipped = [], set(), []
    out.parent.mkdir(parents=True, exist_ok=True)
    progress.start(len(slides), "building corpus")
    try:
        with atomic_path(out) as tmp:  # an existing corpus (overwrite=True) is replaced only once this one is complete
            tmp.mkdir()
            for spec in slides:
                progress.check()
                if spec.adata is not None:
                    adata = spec.adata
                else:
                    adata = read_slide(spec.path, table=spec.table, backed=Path(spec.path).suffix == ".h5ad")
                adata = with_counts(adata, spec.counts_layer, f"slide {spec.path}")  # YAML key: counts_layer
                sid = _slide_id(spec, taken)
                match = resolve_genes(adata, vocab, gene_col=spec.gene_col)
                mod, reason = resolve_modality(adata, spec.modality)
                used = match.vocab_ids >= 0
                stats = SlideStats.from_chunks(iter_row_chunks(adata), adata.n_vars, used)
                keep_cells, keep_genes = quality_masks(stats, match.vocab_ids, mod.min_genes_per_cell)
                if keep_cells.sum() < 2 or keep_genes.sum() == 0:
                    skipped.append(f"{spec.path}: {int(keep_cells.sum())} cells pass QC (>= {mod.min_genes_per_cell} "
                                   f"expressed genes for {mod.name})")
                    progress.update()
                    continue
                ids = np.where(keep_genes, match.vocab_ids, -1)
                d = tmp / "slides" / sid
                d.mkdir(parents=True)
                # the expressed entries go to disk chunk by chunk: memory stays bounded by a chunk, not the slide
                indptr, nnz = [np.zeros(1, dtype=np.int64)], 0
                with open(d / "genes.bin", "wb") as fg, open(d / "values.bin", "wb") as fv:
                    for start, stop, X in iter_row_chunks(adata):
                        X = X[keep_cells[start:stop]].tocsr()
                        X.eliminate_zeros()
                        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
                        g = ids[X.indices]
                        ok = g >= 0
                        g = g[ok].astype(np.int32)
                        v = (X.data[ok] / stats.nonzero_mean).astype(np.float32)
                        fg.write(g.tobytes())
                        fv.write(v.tobytes())
                        gsum += np.bincount(g, weights=v.astype(np.float64), minlength=len(vocab))
                        gcnt += np.bincount(g, minlength=len(vocab))
                        nnz += len(g)
                        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(rows[ok], minlength=X.shape[0])))
                _bin_to_npy(d / "genes.bin", np.int32, nnz)
                _bin_to_npy(d / "values.bin", np.float32, nnz)
                coords = get_coordinates(adata)
                coords = coords[keep_cells] if coords is not None else None
                np.save(d / "indptr.npy", np.concatenate(indptr).astype(np.int64))
                np.save(d / "panel.npy", np.unique(ids[ids >= 0]).astype(np.int32))
                if coords is not None:
                    np.save(d / "coords.npy", coords.astype(np.float64))
                n = int(keep_cells.sum())
                split = _validation_mask(coords, n, patch_size, val_fraction, rng)
                np.save(d / "split.npy", split)
                source = "in-memory AnnData" if spec.adata is not None else str(Path(spec.path).resolve())
                entries.append({"slide_id": sid, "source": source, "modality": mod.name,
                                "modality_reason": reason, "n_cells": n, "n_cells_input": int(adata.n_obs),
                                "n_genes": int((ids >= 0).sum()), "n_val": int(split.sum()),
                                "has_coords": coords is not None, "gene_match": match.report(),
                                "nnz": nnz})
                log.info("%s: %d cells, %d genes (%s)", sid, n, entries[-1]["n_genes"], mod.name)
                progress.update()
            if not entries:
                raise InputError("the corpus would be empty: no slide kept any cell after quality control"
                                 + ("; " + "; ".join(skipped) if skipped else ""))
            means = np.full(len(vocab), np.nan)
            seen = gcnt > 0
            means[seen] = gsum[seen] / gcnt[seen]
            GeneStats(means).save(tmp / "gene_stats.csv", vocab.tokens)
            vocab.save(tmp / "vocab.json")
            meta = {"format": CORPUS_FORMAT, "slides": entries, "skipped": skipped, "val_fraction": val_fraction,
                    "patch_size_for_split": patch_size, "seed": seed, "vocab_fingerprint": vocab.fingerprint(),
                    "n_cells": sum(e["n_cells"] for e in entries), "n_genes_with_stats": int(seen.sum()),
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions()}
            (tmp / "corpus.json").write_text(json.dumps(meta, indent=2))
    finally:
        progress.close()
    for s in skipped:
        log.warning("skipped %s", s)
    return out


def _bin_to_npy(raw: Path, dtype, n: int, block: int = 1 << 24) -> None:
    """Turn a raw array file into NAME.npy (memory-mapped copy in blocks), then remove the raw file."""
    out = np.lib.format.open_memmap(raw.with_suffix(".npy"), mode="w+", dtype=dtype, shape=(n,))
    if n:
        src = np.memmap(raw, dtype=dtype, mode="r", shape=(n,))
        for i in range(0, n, block):
            out[i:i + block] = src[i:i + block]
        del src
    out.flush()
    del out
    raw.unlink()


@dataclass
class CorpusSlide:
    slide_id: str
    modality: str
    indptr: np.ndarray
    genes: np.ndarray
    values: np.ndarray
    panel: np.ndarray
    coords: np.ndarray | None
    split: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.genes[a:b], self.values[a:b]

    @functools.cached_property
    def panel_index(self) -> np.ndarray:
        """Vocabulary id -> position in ``panel`` (-1: not measured); every stored gene is in the panel."""
        index = np.full(int(self.panel.max()) + 1 if len(self.panel) else 0, -1, dtype=np.int64)
        index[self.panel] = np.arange(len(self.panel))
        return index

    @functools.cached_property
    def count_unit(self) -> float | None:
        """The stored value of one read (values are counts / slide mean), or None when the slide's values
        are not whole counts (already normalised data cannot be thinned)."""
        v = np.asarray(self.values[:200_000], dtype=np.float64)
        if not len(v):
            return None
        unit = float(v.min())
        c = v / unit
        return unit if np.mean(np.abs(c - np.round(c)) < 1e-3) > 0.99 else None


class Corpus:
    """Memory-mapped view of a corpus folder."""

    def __init__(self, path: str | Path):
        path = Path(path).expanduser()
        meta_file = path / "corpus.json"
        if not meta_file.exists():
            raise InputError(f"{path} is not an spgpt corpus (no corpus.json); build one with `spgpt corpus build`")
        self.path = path
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format", 0) > CORPUS_FORMAT:
            raise InputError(f"{path} was built by a newer spgpt; rebuild it or upgrade")
        self.slides: list[CorpusSlide] = []
        for e in self.meta["slides"]:
            d = path / "slides" / e["slide_id"]
            try:
                self.slides.append(CorpusSlide(
                    e["slide_id"], e["modality"], np.load(d / "indptr.npy", mmap_mode="r"),
                    np.load(d / "genes.npy", mmap_mode="r"), np.load(d / "values.npy", mmap_mode="r"),
                    np.load(d / "panel.npy"), np.load(d / "coords.npy") if e["has_coords"] else None,
                    np.load(d / "split.npy")))
            except (OSError, ValueError) as err:
                raise InputError(f"corpus slide {d} is incomplete or corrupt ({err}); rebuild the corpus") from err
        if not self.slides:
            raise InputError(f"corpus {path} holds no slides")

        self.vocab = GeneVocab.from_file(path / "vocab.json")
        self.gene_stats = GeneStats.load(path / "gene_stats.csv", len(self.vocab))

    @property
    def n_cells(self) -> int:
        return sum(s.n_cells for s in self.slides)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{k: e[k] for k in ("slide_id", "modality", "n_cells", "n_genes", "n_val", "has_coords")}
                             for e in self.meta["slides"]])
