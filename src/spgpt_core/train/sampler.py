"""Spatially-aware patch sampling (Methods 4.2.3).

From a slide of m (training) cells an epoch picks m/n random centre cells and collates each with its
n - 1 nearest spatial neighbours (a kNN graph, so it works for any technology's spacing) into a
patch; one patch is one mini-batch. Slides without coordinates give patches of n random cells.
Patches of all slides are shuffled together every epoch.

Everything is a pure function of (seed, epoch): a resumed run sees exactly the patches an
uninterrupted one would, and under DDP rank r of w takes patches r, r + w, r + 2w, ... of the same
list (truncated to a multiple of w so every rank makes the same number of steps). With gradient
accumulation A on one process, optimizer step s sees patches [sA, (s+1)A); with w ranks and
accumulation A/w each step sees the same set of patches, only spread over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .corpus import Corpus


@dataclass(frozen=True)
class Patch:
    slide: int  # index into corpus.slides
    cells: np.ndarray  # cell indices within the slide, centre first


class PatchSampler:
    def __init__(self, corpus: Corpus, patch_size: int = 16, split: int = 0, seed: int = 0):
        if patch_size < 2:
            raise ValueError("patch_size must be >= 2 (GEPS-inter needs neighbours)")
        self.corpus, self.n, self.split, self.seed = corpus, patch_size, split, seed
        self._cells = []  # per slide: indices of the cells of this split
        self._trees = []
        for s in corpus.slides:
            cells = np.flatnonzero(np.asarray(s.split) == split)
            self._cells.append(cells)
            has_xy = s.coords is not None and len(cells) > 1
            self._trees.append(cKDTree(s.coords[cells]) if has_xy else None)

    def patches(self, epoch: int) -> list[Patch]:
        """All patches of an epoch, shuffled (validation: the same fixed list every epoch)."""
        rng = np.random.default_rng([self.seed, self.split, epoch if self.split == 0 else 0])
        out: list[Patch] = []
        for si, (cells, tree) in enumerate(zip(self._cells, self._trees)):
            m = len(cells)
            if m < 2:
                continue
            k = min(self.n, m)
            n_centres = max(1, int(round(m / self.n)))
            if tree is None:
                perm = rng.permutation(m)
                for c in range(n_centres):
                    out.append(Patch(si, cells[np.roll(perm, -c * k)[:k]]))
                continue
            centres = rng.choice(m, size=n_centres, replace=False)
            _, idx = tree.query(tree.data[centres], k=k)
            idx = np.asarray(idx).reshape(len(centres), k)
            out.extend(Patch(si, cells[row]) for row in idx)
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def rank_patches(self, epoch: int, rank: int = 0, world: int = 1) -> list[Patch]:
        """This rank's share of the epoch's patches: patches[rank::world], equal counts on every rank."""
        allp = self.patches(epoch)
        usable = len(allp) - len(allp) % world
        return allp[rank:usable:world]
