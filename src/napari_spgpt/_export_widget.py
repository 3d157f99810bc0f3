"""Export widget: a slide and its results to ``.h5ad``, ``.csv`` and SpatialData ``.zarr``, into a
folder the user picks; existing files are only replaced after a confirmation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, FileEdit, LineEdit
from napari.utils import notifications
from qtpy.QtWidgets import QMessageBox

from ._base import SlideWidget
from ._commands import join
from ._export import export_csv, export_h5ad, export_zarr

if TYPE_CHECKING:
    import napari.viewer


def confirm(parent, title: str, text: str) -> bool:
    """Ask before replacing files (tests replace this function)."""
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class ExportWidget(SlideWidget):
    run_text = "Export"
    job_name = "export"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.folder = FileEdit(label="Folder", mode="d", value=str(Path.home()))
        self.basename = LineEdit(label="File name", value="", tooltip="Without extension; each format adds its own")
        self.h5ad = CheckBox(value=True, text=".h5ad (AnnData with every result)")
        self.csv = CheckBox(value=True, text=".csv (one row per spot: coordinates, obs, results)")
        self.embedding = CheckBox(value=False, text="include the embedding columns in the .csv")
        self.zarr = CheckBox(value=False, text=".zarr (SpatialData: the slide with its results)")
        super().__init__(viewer, [self.folder, self.basename, self.h5ad, self.csv, self.embedding, self.zarr])
        self._on_slide_changed()

    def _on_slide_changed(self, *_) -> None:
        slide = self.slide
        if slide is not None and not self.basename.value:
            self.basename.value = f"{slide.name}_spgpt"
        if slide is not None and slide.kind == "zarr":
            # a new store unless the folder and name are the source's own (then only its table is rewritten)
            self.zarr.text = (f".zarr (SpatialData: a copy of {Path(slide.source).name} with the results in table "
                              f"'{slide.table}')")
        super()._on_slide_changed()

    def targets(self) -> list[tuple[str, Path]]:
        folder = Path(str(self.folder.value)).expanduser()
        base = self.basename.value.strip() or "spgpt_results"
        out = []
        for fmt, box in (("h5ad", self.h5ad), ("csv", self.csv), ("zarr", self.zarr)):
            if box.value:
                out.append((fmt, folder / f"{base}.{fmt}"))
        return out

    def command_text(self) -> str:
        """The same exports from the command line: the .h5ad holds every result, the others are written from it."""
        targets = dict(self.targets())
        source = targets.get("h5ad")
        lines = [] if source is not None else ["# export the .h5ad first (it holds every result), then:"]
        source = source or Path(f"{self.basename.value.strip() or 'spgpt_results'}.h5ad")
        for fmt, path in targets.items():
            if fmt == "h5ad":
                lines.append("# the .h5ad: the slide and every result, as the analyses left them")
                continue
            extra = ["--include-embedding"] if fmt == "csv" and self.embedding.value else []
            lines.append(join(["spgpt", "export", str(source), "--out", str(path), *extra]))
        return "\n".join(lines)

    def run(self) -> None:
        slide = self.require_slide()
        if slide is None:
            return
        targets = self.targets()
        if not targets:
            notifications.show_warning("Tick at least one format to export.")
            return
        existing = [p for _, p in targets if p.exists()]
        into_source = [p for p in existing if slide.source and p.resolve() == Path(slide.source).resolve()]
        if existing:
            text = "These exist and will be replaced:\n" + "\n".join(f"  {p}" for p in existing)
            if into_source:
                text += (f"\n\n{into_source[0].name} is the store this slide was read from: only its table "
                         f"'{slide.table}' is rewritten." if slide.kind == "zarr" else "")
            if not confirm(self.native, "Replace existing files?", text):
                self.controls.status.value = "Export cancelled; nothing was written."
                return
        if slide.kind == "h5ad" and any(fmt == "h5ad" and p.resolve() == Path(slide.source).resolve()
                                        for fmt, p in targets if p.exists()):
            notifications.show_warning("spgpt never writes over the .h5ad a slide was read from; choose another file name.")
            return
        with_embedding = bool(self.embedding.value)

        def work(progress):
            written = []
            progress.start(len(targets), "exporting")
            for fmt, path in targets:
                progress.check()
                overwrite = path.exists()
                if fmt == "h5ad":
                    written.append(export_h5ad(slide, path, overwrite=overwrite))
                elif fmt == "csv":
                    written.append(export_csv(slide, path, overwrite=overwrite, include_embedding=with_embedding))
                else:
                    written.append(export_zarr(slide, path, overwrite=overwrite))
                progress.update(1)
            return written

        self.controls.start(work, on_done=lambda written: self._done(slide, written), slide=slide, what=self.job_name)

    def _done(self, slide, written: list[Path]) -> None:
        self.written = written
        if any(Path(p).suffix in (".h5ad", ".zarr") for p in written):
            slide.unsaved = []  # every result is in the written file
        folders = {str(Path(p).parent) for p in written}
        where = f" to {folders.pop()}" if len(folders) == 1 else ""
        msg = "Wrote " + ", ".join(Path(p).name for p in written) + where
        self.controls.status.value = msg
        notifications.show_info(msg)
