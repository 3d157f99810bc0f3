"""A slide's results are never lost without a question: removing its spots layer asks first.

The spots layer carries the slide (its AnnData, every result). When it is removed while the slide
holds results not yet exported, or a job runs on it, the user is asked: *Keep the slide* puts the
layer back (where it was, with everything on it); *Close the slide* cancels its job, removes its
result layers (they would show data no widget can reach any more) and marks the slide closed, so a
job finishing later commits nothing. A slide without unsaved results closes without a question.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from ._layers import KIND_KEY, get_slide, result_layers


def confirm_close(parent, title: str, text: str) -> bool:
    """Ask whether to close a slide (tests replace this function)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, parent=parent)
    close = box.addButton("Close the slide", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton("Keep the slide", QMessageBox.ButtonRole.RejectRole)
    box.exec()
    return box.clickedButton() is close


def install(viewer, state) -> None:
    """Watch the viewer's layer removals (once per viewer, whichever widget is opened first)."""
    if getattr(state, "guard_installed", False):
        return
    state.guard_installed = True
    viewer.layers.events.removed.connect(lambda event: _on_removed(viewer, event))


def _on_removed(viewer, event) -> None:
    layer = event.value
    slide = get_slide(layer)
    if slide is None or slide.closed:
        return
    # decided after napari has finished this removal: removing more layers or putting this one back
    # from inside the event would run into napari's own handlers of it (and into ``layers.clear()``)
    QTimer.singleShot(0, lambda: _after_removal(viewer, layer, slide, event.index))


def _viewer_closing(viewer) -> bool:
    """napari's Window.close() removes every layer, then deletes its ``_qt_window`` (no public flag)."""
    real = getattr(viewer, "__wrapped__", viewer)
    try:
        return not hasattr(real.window, "_qt_window")
    except Exception:  # noqa: BLE001 - a viewer half torn down is closing
        return True


def _after_removal(viewer, layer, slide, index: int) -> None:
    if slide.closed or any(get_slide(la) is slide for la in viewer.layers):
        return  # closed meanwhile, or another layer (or this one, put back) still holds the slide
    if _viewer_closing(viewer) or (not slide.unsaved and not slide.busy):
        close_slide(viewer, slide)
        return
    lost = ", ".join(slide.unsaved) or "none"
    text = (f"'{layer.name}' holds the slide {slide.name} and its results. Results not exported yet: {lost}."
            + (f"\n'{slide.busy}' is running on it and would be cancelled." if slide.busy else "")
            + "\n\nClose the slide (its results are lost unless exported), or keep it (the layer is put back)?")
    if confirm_close(QApplication.activeWindow(), f"Close {slide.name}?", text):
        close_slide(viewer, slide)
    else:
        viewer.layers.insert(min(int(index), len(viewer.layers)), layer)


def close_slide(viewer, slide) -> None:
    """The slide is gone: cancel its job, drop its result layers (the tissue image stays)."""
    slide.closed = True
    if slide.cancel_job is not None:
        slide.cancel_job()
    for la in result_layers(viewer, slide):
        if (la.metadata or {}).get(KIND_KEY) != "image" and la in viewer.layers:
            viewer.layers.remove(la)
