"""Finding 6: all seven spgpt widgets docked fit a 1366 x 768 laptop screen (they scroll, in one tabbed
dock) and every Run button can be reached."""

from __future__ import annotations

import pytest
from _helpers import add_widget

pytestmark = [pytest.mark.gui]

WIDGETS = ["Load slide", "Model", "Embed & domains", "Deconvolve", "Impute", "Imputation QC", "Export"]


def test_all_widgets_docked_fit_1366x768(sample_viewer, qtbot, record_property):
    from napari_spgpt._layout import SPGPT_DOCK
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QDockWidget, QScrollArea

    viewer = sample_viewer
    widgets = [add_widget(viewer, name) for name in WIDGETS]
    win = viewer.window._qt_window
    win.resize(1366, 768)
    win.show()
    qtbot.waitExposed(win)
    qtbot.wait(200)  # the docks are wrapped in scroll areas and tabified once napari has placed them
    win.resize(1366, 768)
    qtbot.wait(100)
    record_property("window_min_height", win.minimumSizeHint().height())
    print("main window:", win.width(), "x", win.height(), "minimum height", win.minimumSizeHint().height())
    assert win.height() <= 768 and win.minimumSizeHint().height() <= 768
    docks = []
    for w in widgets:
        scroll = w.native.parentWidget()
        while scroll is not None and not (isinstance(scroll, QScrollArea) and scroll.objectName() == SPGPT_DOCK):
            scroll = scroll.parentWidget()
        assert scroll is not None, f"{type(w).__name__} does not scroll"
        dock = scroll.parentWidget()
        assert isinstance(dock, QDockWidget)
        docks.append(dock)
        dock.raise_()  # its tab
        qtbot.wait(30)
        button = w.controls.run_button.native
        scroll.ensureWidgetVisible(button)
        qtbot.wait(30)
        top = button.mapTo(win, QPoint(0, 0)).y()
        assert button.isVisible() and 0 <= top and top + button.height() <= win.height(), type(w).__name__
    tabbed = set(win.tabifiedDockWidgets(docks[0]))
    assert set(docks[1:]) <= tabbed
    # napari still finds every widget behind its scroll area
    assert all(viewer.window.dock_widgets[f"{name} (spgpt)"] is w for name, w in zip(WIDGETS, widgets, strict=True))
