"""spgpt_core.child: a job in another process, with its progress, errors and a cancel that stops it at once."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import child_jobs
from spgpt_core import child
from spgpt_core.errors import Cancelled, InputError
from spgpt_core.progress import Progress


def test_result_and_progress_come_back():
    seen = []
    p = Progress(callback=lambda done, total, desc: seen.append((done, total, desc)))
    assert child.run_in_child(child_jobs.double_with_progress, 20, progress=p) == 40
    assert seen[0] == (0, 20, "counting") and seen[-1] == (20, 20, "counting")


def test_errors_are_raised_in_the_parent_with_the_child_traceback():
    with pytest.raises(InputError, match="no coordinates") as e:
        child.run_in_child(child_jobs.refuse, progress=Progress())
    assert "refuse" in e.value.child_traceback


def test_process_stays_warm_between_jobs_and_is_replaced_after_a_cancel():
    first = child.run_in_child(child_jobs.pid, progress=Progress())
    assert child.run_in_child(child_jobs.pid, progress=Progress()) == first  # warm: same process
    p = Progress()
    threading.Timer(1.0, p.cancel).start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled, match="spinning"):
        child.run_in_child(child_jobs.spin_holding_the_gil, progress=p)
    assert time.perf_counter() - t0 - 1.0 < 1.0  # terminated, although it never checks for cancel
    assert child.run_in_child(child_jobs.pid, progress=Progress()) != first  # a fresh process


def test_a_dead_child_is_a_clear_error():
    with pytest.raises(child.ChildFailed, match="exit code 3"):
        child.run_in_child(child_jobs.die, progress=Progress())
    assert child.run_in_child(child_jobs.double_with_progress, 1, progress=Progress()) == 2


def test_rate_and_eta_text():
    pytest.importorskip("qtpy")
    from napari_spgpt._worker import format_duration, rate_eta

    assert rate_eta(500, 1000, 0.0, 0, 10.0) == " (50 /s, about 10 s left)"
    assert rate_eta(100, 100_000, 0.0, 0, 0.5) == ""  # under a second: no estimate yet
    assert format_duration(125) == "2 min 05 s" and format_duration(7500) == "2 h 05 min"
