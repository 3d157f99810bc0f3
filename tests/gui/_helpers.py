"""Helpers shared by the GUI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_file(rel: str) -> Path:
    """Path of a file under ../shared/data; skips the test (with the reason) when the folder is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (it is present in CI)")
    p = DATA_DIR / rel
    if not p.exists():
        pytest.fail(f"expected data file {p} is missing from ../shared/data")
    return p


def add_widget(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget("spgpt", name)
    return widget


def wait_job(qtbot, widget, timeout: int = 180_000) -> None:
    controls = widget.controls
    qtbot.waitUntil(lambda: not controls.busy, timeout=timeout)
    qtbot.wait(20)
