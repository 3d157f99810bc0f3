"""Models on disk: spgpt's own directory format (``save_pretrained`` / ``from_pretrained``), released
scGPT / scGPT-spatial folders (``scgpt``) and ``random:SIZE[:SEED]`` specs (``spec``)."""

from .pretrained import SpGPT, default_model_dir, load_model, versions

__all__ = ["SpGPT", "load_model", "default_model_dir", "versions"]
