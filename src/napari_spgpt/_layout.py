"""Docked spgpt widgets fit a laptop screen (1366 x 768): each scrolls, and they share one tabbed dock.

napari docks a magicgui widget's ``native`` QWidget directly, so a widget taller than the window
(Embed & domains with its legend and UMAP is ~900 px) pushes the main window past the screen, and
seven of them stacked need 3,600 px. Once napari has put a widget into its QDockWidget, the dock's
content is swapped for a QScrollArea holding the widget, and the dock is tabified with the spgpt
docks already there. The scroll area carries ``_magic_widget`` so napari's ``dock_widgets`` still
returns the magicgui widget.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QWidget

#: marks the scroll areas (and so the docks) holding spgpt widgets
SPGPT_DOCK = "spgpt_scroll"
MAX_DOCK_WIDTH = 420  # px a docked widget asks for at most (1366 px screen: the canvas keeps ~600)


class _FitWhenDocked(QObject):
    """Event filter on a widget's native QWidget: when napari reparents it into a dock, wrap it."""

    def __init__(self, container) -> None:
        super().__init__(container.native)
        self._container = container

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            # after napari's add_dock_widget has finished with the dock (title bar, stretch, menus)
            QTimer.singleShot(0, self.fit)
        return False

    def fit(self) -> None:
        try:
            native = self._container.native
            dock = _dock_of(native)
        except RuntimeError:  # deleted meanwhile
            return
        if dock is None or isinstance(dock.widget(), QScrollArea):
            return
        scroll = QScrollArea()
        scroll.setObjectName(SPGPT_DOCK)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # narrow enough to leave a laptop's canvas most of the width; a wider widget scrolls sideways too
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll._magic_widget = self._container  # napari's inner_widget() / dock_widgets look for this
        scroll.setMinimumWidth(min(native.minimumSizeHint().width() + 24, MAX_DOCK_WIDTH))
        old = dock.widget()  # napari's wrapper (the widget itself, or a stretch container around it)
        dock.setWidget(scroll)
        scroll.setWidget(old)
        # a dock laid out before the swap (window shown first) keeps the old content's minimum as its own
        dock.setMinimumHeight(50)
        dock.layout().invalidate()
        tabify_spgpt_docks(dock)


def fit_when_docked(container) -> None:
    """Call once in a widget's constructor (the filter lives as long as the widget)."""
    container._spgpt_fit = _FitWhenDocked(container)
    container.native.installEventFilter(container._spgpt_fit)


def _dock_of(widget: QWidget) -> QDockWidget | None:
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def tabify_spgpt_docks(dock: QDockWidget) -> None:
    """Put ``dock`` in a tab next to the other spgpt docks in the same area, and show it."""
    window = dock.parentWidget()
    while window is not None and not isinstance(window, QMainWindow):
        window = window.parentWidget()
    if window is None:
        return
    area = window.dockWidgetArea(dock)
    others = [d for d in window.findChildren(QDockWidget)
              if d is not dock and isinstance(d.widget(), QScrollArea) and d.widget().objectName() == SPGPT_DOCK
              and window.dockWidgetArea(d) == area and not d.isFloating()]
    if others:
        window.tabifyDockWidget(others[-1], dock)
    dock.raise_()
