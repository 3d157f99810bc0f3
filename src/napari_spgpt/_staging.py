"""A job's results are staged, then committed to the slide in one GUI-thread step.

No Qt and no napari here. A worker never writes into the slide's AnnData: it runs the analysis on a
:func:`scratch` AnnData that shares the slide's matrices (``X``, ``layers``, ``raw``, never written
by the analyses) but has its own ``obs`` / ``obsm`` / ``uns`` containers, and returns a
:class:`Staged` with the keys the analysis wrote. Only the widget's ``on_done`` (GUI thread, after
the job succeeded) applies it with :meth:`Staged.apply`; a cancelled or failed job is dropped with
its scratch copy, so the slide, its layers and an export stay exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ABSENT = object()


def scratch(adata):
    """An AnnData to run an analysis on: the slide's matrices shared (not copied), with its own ``obs``
    (a copy: small), ``obsm`` and ``uns`` containers (shallow: the analyses replace entries, they do not
    edit them in place)."""
    import anndata as ad  # ~2 s on import: only inside a worker

    if adata.isbacked:
        adata = adata.to_memory()
    raw = None if adata.raw is None else {"X": adata.raw.X, "var": adata.raw.var, "varm": dict(adata.raw.varm)}
    return ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var, uns=dict(adata.uns), obsm=dict(adata.obsm),
                      obsp=dict(adata.obsp), layers=dict(adata.layers), raw=raw)


@dataclass
class Staged:
    """Values to set (or, as ``_ABSENT``, delete) per AnnData slot; nothing is written until :meth:`apply`."""

    obs: dict[str, Any] = field(default_factory=dict)
    obsm: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def collect(cls, work, *, obs=(), obsm=(), uns=()) -> Staged:
        """The named keys as the analysis left them in ``work`` (a key it removed is deleted on apply)."""
        staged = cls()
        staged.obs = {k: work.obs[k].values if k in work.obs else _ABSENT for k in obs}  # Categorical stays one
        staged.obsm = {k: work.obsm[k] if k in work.obsm else _ABSENT for k in obsm}
        staged.uns = {k: work.uns[k] if k in work.uns else _ABSENT for k in uns}
        return staged

    def keys(self) -> list[str]:
        return [*self.obs, *self.obsm, *self.uns]

    def apply(self, adata) -> None:
        """Write every staged value into ``adata`` (GUI thread; plain assignments, no computation)."""
        for slot, values in (("obs", self.obs), ("obsm", self.obsm), ("uns", self.uns)):
            target = getattr(adata, slot)
            for key, value in values.items():
                if value is _ABSENT:
                    if key in target:
                        del target[key]
                else:
                    target[key] = value
