"""``spgpt embed`` over a cohort: several slide files, one output each, cells shared out over torchrun ranks.

One process embeds the slides in turn (:func:`spgpt_core.tl.embed`). Under ``torchrun``
(``WORLD_SIZE`` > 1) every rank computes each slide's statistics itself (a streaming pass, cheap
next to the model, and the same on every rank) but embeds only its contiguous share of the cells
and writes it to ``OUT/.spgpt_shards/`` (atomically); after a barrier rank 0 assembles each slide,
writes its output with the record a one-process run writes, and removes the shards. Every random
choice is keyed by (seed, cell index, gene), so the result equals the one-process run up to float
rounding, whatever the number of ranks.

The shards travel through the file system: across nodes, ``--out`` must be on a file system every
node sees, as the slides themselves must be. Process start-up and rendezvous are torchrun's.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .checkpoint import load_model
from .distributed import barrier, close, init_distributed, share
from .errors import InputError
from .io import _check_free, read_slide
from .output import write_results
from .pp.counts import with_counts
from .progress import Progress
from .tl._embed import context_genes, embed, embed_arrays, prepare_slide, store_embedding

SHARD_DIR = ".spgpt_shards"


def output_paths(inputs: list[str], out: str | Path) -> list[Path]:
    """One slide and ``--out FILE.h5ad``: that file. Otherwise ``--out`` is a folder that receives one
    ``<slide name>_embedded.h5ad`` per slide."""
    out = Path(out).expanduser()
    if out.suffix == ".h5ad":
        if len(inputs) > 1:
            raise InputError(f"{len(inputs)} slides need --out DIR (one <slide>_embedded.h5ad each), not the file {out}")
        return [out]
    names = [Path(s).name.removesuffix(".h5ad").removesuffix(".zarr") + "_embedded.h5ad" for s in inputs]
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise InputError(f"several slides would write {', '.join(sorted(seen))} in {out}; give slides distinct "
                         "file names or embed them in separate runs")
    return [out / n for n in names]


def embed_cohort(inputs: list[str], out: str | Path, *, model: str = "default", device: str = "auto",
                 key_added: str = "X_spgpt", gene_col: str | None = None, modality: str | None = None,
                 n_top_genes: int | None = None, batch_size: int = 64, max_seq_len: int | None = None, seed: int = 0,
                 empty: str = "error", counts_layer: str | None = None, table: str | None = None,
                 coordinate_system: str | None = None, overwrite: bool = False,
                 progress: Progress | None = None) -> list[Path]:
    """Embed every slide of ``inputs`` into its own output (see :func:`output_paths`); returns the outputs
    (rank 0; other ranks return an empty list). Options as :func:`spgpt_core.tl.embed`."""
    outs = output_paths(inputs, out)
    for src, dst in zip(inputs, outs):  # before the long work, on every rank alike (same file system)
        if dst.exists() and Path(src).expanduser().resolve() == dst.resolve():
            raise InputError(f"refusing to write over the input file {dst}; choose another --out path")
        _check_free(dst, overwrite)
    opts = dict(key_added=key_added, gene_col=gene_col, n_top_genes=n_top_genes, batch_size=batch_size,
                max_seq_len=max_seq_len, seed=seed, empty=empty, counts_layer=counts_layer)

    def read(path):
        return read_slide(path, table=table, coordinate_system=coordinate_system, backed=True)

    rank, world, dev = init_distributed(device)
    try:
        mdl = load_model(model, device=str(dev))
        if world == 1:
            for src, dst in zip(inputs, outs):
                _embed_one(read(src), src, dst, mdl, modality, opts, overwrite, progress)
            return outs
        return _embed_sharded(inputs, outs, read, mdl, modality, opts, overwrite, rank, world, progress)
    finally:
        close(world)


def _embed_one(adata, src, dst, model, modality, opts, overwrite, progress) -> None:
    t0 = time.time()
    embed(adata, model, modality=modality, progress=progress, **opts)
    _write(adata, src, dst, opts["key_added"], overwrite, time.time() - t0)


def _embed_sharded(inputs, outs, read, model, modality, opts, overwrite, rank, world, progress) -> list[Path]:
    if opts["batch_size"] < 1:
        raise InputError(f"batch_size must be >= 1 (got {opts['batch_size']})")
    context_genes(model.config.max_seq_len, opts["max_seq_len"])
    shard_dir = outs[0].parent / SHARD_DIR
    if rank == 0:  # shards of an interrupted run must not be mistaken for this one's
        shutil.rmtree(shard_dir, ignore_errors=True)
        shard_dir.mkdir(parents=True)
    barrier(world)
    prepared, seconds = [], []
    for i, src in enumerate(inputs):
        t0 = time.time()
        adata = with_counts(read(src), opts["counts_layer"])
        prep = prepare_slide(adata, model, gene_col=opts["gene_col"], modality=modality, empty=opts["empty"],
                             n_top_genes=opts["n_top_genes"])
        first, last = share(adata.n_obs, rank, world)
        part = embed_arrays(adata, model, prep, batch_size=opts["batch_size"], seed=opts["seed"],
                            max_seq_len=opts["max_seq_len"], rows=(first, last), progress=progress)
        with atomic_path(_shard(shard_dir, i, rank)) as tmp, open(tmp, "wb") as f:
            np.save(f, part)
        prepared.append(prep)
        seconds.append(time.time() - t0)
    barrier(world)  # every share of every slide is on disk
    if rank != 0:
        return []
    for i, (src, dst, prep) in enumerate(zip(inputs, outs, prepared)):
        t0 = time.time()
        emb = np.concatenate([_load_shard(shard_dir, i, r, world) for r in range(world)])
        adata = read(src)
        if len(emb) != adata.n_obs:
            raise InputError(f"the shards of {src} hold {len(emb)} rows for {adata.n_obs} cells; run again")
        store_embedding(adata, emb, prep, model, **opts)
        _write(adata, src, dst, opts["key_added"], overwrite, seconds[i] + time.time() - t0, world)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return outs


def _shard(shard_dir: Path, slide: int, rank: int) -> Path:
    return shard_dir / f"slide{slide:05d}.rank{rank:05d}.npy"


def _load_shard(shard_dir: Path, slide: int, rank: int, world: int) -> np.ndarray:
    path = _shard(shard_dir, slide, rank)
    if not path.exists():
        raise InputError(f"rank {rank} of {world} finished but its share {path} is not there: across nodes --out "
                         "must be on a file system every node sees (NFS, Lustre, ...)")
    return np.load(path)


def _write(adata, src, dst, key, overwrite, seconds, world=1) -> None:
    info = adata.uns[key]
    obs = {f"{key}_empty": adata.obs[f"{key}_empty"]} if f"{key}_empty" in adata.obs else {}
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_results(adata, dst, input_path=src, obsm={key: adata.obsm[key]}, obs=obs, uns={key: info},
                  overwrite=overwrite)
    gm = info["gene_match"]
    used = info["summary"]["n_genes_used"]
    hv = f", the {used:,} most variable used" if used < gm["n_matched"] else ""
    ranks = f" on {world} processes" if world > 1 else ""
    print(f"embedded {adata.n_obs:,} cells with {gm['n_matched']:,}/{gm['n_total']:,} matched genes{hv} "
          f"({info['params']['modality']}) in {seconds:.1f}s{ranks} -> {dst} obsm['{key}']")
