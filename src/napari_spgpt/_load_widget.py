"""Load slide widget: pick the file, then its table, coordinate system and image, and
how to draw the cells. (File > Open uses the same loader with default choices.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton
from napari.utils import notifications
from qtpy.QtWidgets import QFileDialog
from spgpt_core.errors import SpgptError

from ._choices import dynamic, set_choices
from ._io import AUTO, DRAW_CHOICES, NO_IMAGE, _best_image, inspect_store, kind_of, load_slide
from ._layers import slide_layer_tuples
from ._layout import fit_when_docked
from ._raster import RASTER_ABOVE
from ._reader import attach_sample_reference
from ._worker import JobControls

if TYPE_CHECKING:
    import napari.viewer

NONE = "(no image)"


class LoadWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.path = FileEdit(label="Slide", mode="r", filter="Slides (*.h5ad *.zarr)",
                             tooltip="An .h5ad file, a SpatialData .zarr folder or an instrument's output folder "
                                     "(Xenium, Visium HD, MERSCOPE, CosMx; use 'Choose folder')")
        self.folder_button = PushButton(text="Choose folder (.zarr or instrument output)...")
        self.table = dynamic(ComboBox, label="Table", tooltip="SpatialData table with the expression")
        self.coordinate_system = dynamic(ComboBox, label="Coordinate system")
        self.image = dynamic(ComboBox, [NONE], label="Image",
                              tooltip="Spots are drawn in this image's pixel frame")
        self.draw = ComboBox(label="Draw cells as", choices=list(DRAW_CHOICES), value="auto",
                             tooltip=f"Every cell is drawn. auto: points up to {RASTER_ABOVE:,} cells, above that a "
                                     "raster (one or more pixels per cell), which redraws fast at any size")
        self.slide_name = LineEdit(label="Name", value="")
        self.controls = JobControls("Load")
        super().__init__(widgets=[self.path, self.folder_button, self.table, self.coordinate_system, self.image,
                                  self.draw, self.slide_name, self.controls])
        fit_when_docked(self)  # scrolls, in one tabbed dock with the other spgpt widgets
        self.info = None
        self.path.changed.connect(self._on_path)
        self.folder_button.clicked.connect(self._choose_folder)
        self.table.changed.connect(self._on_table)
        self.coordinate_system.changed.connect(self._on_system)
        self.controls.run_button.clicked.connect(self.load)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Choose a SpatialData .zarr or instrument output folder")
        if folder:
            self.path.value = folder

    def _on_path(self, *_) -> None:
        path = self.path.value
        self.info = None
        if path is None or kind_of(path) is None:
            set_choices(self.table, [])
            set_choices(self.coordinate_system, [])
            set_choices(self.image, [NONE])
            return
        try:
            self.info = inspect_store(path)
        except SpgptError as e:
            notifications.show_error(str(e))
            return
        self.slide_name.value = self.info.path.stem
        set_choices(self.table, self.info.tables)
        self.coordinate_system.visible = self.info.kind == "zarr"
        # an instrument folder has one table, or Visium HD's bin sizes
        self.table.visible = self.info.kind == "zarr" or len(self.info.tables) > 1
        self._on_table()

    def _on_table(self, *_) -> None:
        if self.info is None:
            return
        if self.info.kind == "zarr":
            set_choices(self.coordinate_system, self.info.systems(self.table.value))
        self._on_system()

    def _on_system(self, *_) -> None:
        if self.info is None:
            return
        images = self.info.images_in(self.coordinate_system.value)
        set_choices(self.image, [*images, NONE], _best_image(images) or NONE)

    def load(self) -> None:
        if self.path.value is None or self.info is None:
            notifications.show_warning("Choose an .h5ad file, a SpatialData .zarr folder or an instrument's output "
                                       "folder first.")
            return
        path = self.info.path
        kwargs = {"table": self.table.value if self.info.kind in ("zarr", "vendor") else None,
                  "coordinate_system": self.coordinate_system.value if self.info.kind == "zarr" else None,
                  "image": NO_IMAGE if self.image.value == NONE else (self.image.value or AUTO),
                  "draw": self.draw.value, "name": self.slide_name.value or None}

        def work(progress):
            progress.start(0, f"reading {path.name}")
            return load_slide(path, **kwargs)

        self.controls.start(work, on_done=self._show, what="load")

    def _show(self, slide) -> None:
        attach_sample_reference(slide)
        for data, kwargs, layer_type in slide_layer_tuples(slide):
            getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
        for note in slide.notes:
            notifications.show_info(note)
        self.controls.status.value = (f"Loaded {slide.name}: all {slide.adata.n_obs:,} cells drawn as {slide.drawn_as}. "
                                      + " ".join(slide.notes))
