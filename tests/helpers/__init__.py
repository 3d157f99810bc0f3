"""Code shared by the tests and reused by the benchmarks in bench/.

* ``data``: the real data folder (``data_file``, ``all_h5ad``);
* ``scgpt_checkpoint``: writes a scGPT-human-format checkpoint directory with random weights;
* ``reference_embed``: an independent, naive re-creation of the reference embedding path;
* ``pseudo_spots``: pseudo-spots with known cell-type proportions from labelled single cells;
* ``gui_latency``: measures how long napari's GUI thread stalls while a slide is embedded.
* ``device_guard``: a simulated GPU that records (and stops) every move of a module or tensor to CUDA.

pytest puts tests/ on ``sys.path`` (tests/ has no ``__init__.py``), so tests import
``from helpers.data import data_file``. The benchmarks put tests/ on ``sys.path`` themselves:
they measure with the same ground truth and reference the tests check against. Nothing here
imports bench/.
"""
