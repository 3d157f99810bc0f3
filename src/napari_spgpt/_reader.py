"""npe2 reader: SpatialData ``.zarr`` stores and ``.h5ad`` files with spatial coordinates.

The reader shows the slide with default choices (first table, its first coordinate system, a
'hires' image when there is one); the *Load slide* widget offers the other tables, coordinate
systems and images. Problems a user can fix appear as a notification with spgpt's message and
no layer is added; the viewer stays usable.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils import notifications
from spgpt_core.errors import SpgptError

from ._io import kind_of, load_slide
from ._layers import slide_layer_tuples


def get_reader(path):
    """Return :func:`read_slide_layers` if ``path`` is a slide this plugin reads, else None (never raises)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return read_slide_layers if kind_of(path) is not None else None
    except OSError:
        return None


def read_slide_layers(path) -> list[tuple]:
    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        slide = load_slide(path)
    except SpgptError as e:
        notifications.show_error(str(e))
        return [(None,)]
    attach_sample_reference(slide)
    for note in slide.notes:
        notifications.show_info(note)
    return slide_layer_tuples(slide)


def attach_sample_reference(slide) -> None:
    """Slides written by the sample-data command name their generated reference in ``uns``."""
    ref = (slide.adata.uns.get("spgpt_sample") or {}).get("reference")
    if ref and Path(str(ref)).is_file():
        slide.reference = str(ref)
