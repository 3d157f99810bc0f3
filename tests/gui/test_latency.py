"""The GUI thread stays responsive while a slide is embedded (measurement in tests/helpers/gui_latency.py)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:zarr v3 autosharding")]


def test_gui_thread_not_blocked_during_embedding(sample_viewer, qtbot, record_property):
    from helpers.gui_latency import measure

    def wait(predicate, timeout_s):
        qtbot.waitUntil(predicate, timeout=int(timeout_s * 1000))

    result = measure(sample_viewer, wait, model="random:tiny")
    phases = result["phases"]
    print("GUI stalls while embedding:", phases)
    record_property("gui_stalls", phases)
    embedding = phases["embedding"]
    assert embedding["ticks"] > 20  # the timer kept firing throughout
    assert embedding["max_stall_ms"] < 500, phases
    assert max(p["max_stall_ms"] for p in phases.values()) < 1500, phases
