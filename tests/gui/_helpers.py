"""Helpers shared by the GUI tests."""

from __future__ import annotations

from helpers.data import DATA_DIR, data_file  # noqa: F401  (re-exported for the GUI tests)


def add_widget(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget("spgpt", name)
    return widget


def wait_job(qtbot, widget, timeout: int = 180_000) -> None:
    controls = widget.controls
    qtbot.waitUntil(lambda: not controls.busy, timeout=timeout)
    qtbot.wait(20)
