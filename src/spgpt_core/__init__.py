"""spgpt_core: scGPT-spatial reimplemented (model, training, embedding and downstream analysis).

Headless by design: nothing here imports napari or Qt.

Quick start::

    import spgpt_core as sg
    model = sg.load_model("default")            # or a directory, or "random:small"
    adata = sg.read_slide("slide.h5ad")
    sg.tl.embed(adata, model, key_added="X_spgpt")

Layout: ``model`` (the network), ``checkpoint`` (models on disk), ``pp`` (preprocessing), ``tl``
(analyses, scanpy style), ``train`` (pretraining, fine-tuning), ``pl`` (figures), ``metrics``,
``io`` (slides on disk), ``params`` (option declarations shared with the CLI and the plugin).
"""

import importlib

from ._version import __version__
from .errors import CheckpointError, InputError, SpgptError

# Everything else loads on first use (PEP 562): the CLI and the napari plugin import light modules such as
# spgpt_core.params at start-up, and importing a submodule runs this file first, so it must not pull in
# torch, scanpy or sklearn.
_SUBMODULES = ("tl", "pp", "pl", "train", "metrics", "datasets", "checkpoint", "io", "params")
_ATTRIBUTES = {"SpGPT": "checkpoint", "load_model": "checkpoint", "read_slide": "io"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module 'spgpt_core' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES, *_ATTRIBUTES])


__all__ = [*_SUBMODULES, *_ATTRIBUTES, "SpgptError", "InputError", "CheckpointError", "__version__"]
