"""napari-spgpt: the napari plugin of spgpt (scGPT-spatial).

Open SpatialData ``.zarr`` stores and ``.h5ad`` slides, then embed, find spatial domains,
deconvolve, impute and check imputed genes from dock widgets (Plugins > spgpt). Every widget calls
the same ``spgpt_core`` functions as the ``spgpt`` command line and can show that command.

Importing this package is cheap: napari discovers the contributions from ``napari.yaml`` and the
widgets import torch, scanpy and spatialdata only when they are created or run.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
