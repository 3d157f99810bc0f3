"""spgpt_core: scGPT-spatial reimplemented (model, training, embedding and downstream analysis).

Headless by design: nothing here imports napari or Qt.

Quick start::

    import spgpt_core as sg
    model = sg.load_model("default")            # or a directory, or "random:small"
    adata = sg.read_slide("slide.h5ad")
    sg.tl.embed(adata, model, key_added="X_spgpt")
"""

from ._version import __version__

from . import tl  # noqa: E402  (scanpy-style verbs)
from .errors import CheckpointError, InputError, SpgptError  # noqa: E402
from .io import read_slide  # noqa: E402
from .pretrained import SpGPT, load_model  # noqa: E402

_LAZY = ("train", "metrics", "plotting", "datasets")  # imported on first use (sklearn / matplotlib are slow)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'spgpt_core' has no attribute {name!r}")


__all__ = ["tl", *_LAZY, "SpGPT", "load_model", "read_slide", "SpgptError", "InputError", "CheckpointError", "__version__"]
