"""Fixtures for the napari plugin tests (run under Xvfb; pytest-xvfb starts it when installed).

Every test gets a fresh viewer from napari's ``make_napari_viewer`` with the untrained tiny model
(``random:tiny``) preselected so runs take seconds. The sample data is generated once per session
into a temporary cache folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Skip (with the reason) rather than crash when there is no display and no Xvfb to start one."""
    if os.environ.get("DISPLAY") or shutil.which("Xvfb"):
        return
    skip = pytest.mark.skip(reason="napari GUI tests need a display: install Xvfb (Debian: apt-get install xvfb "
                                   "libxcb-icccm4 libxcb-keysyms1) so pytest-xvfb can start one")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


#: Extra references to None. In this Qt stack every Python slot Qt calls (a QTimer tick, a queued progress
#: signal) loses one reference to None (measured: 300 ticks of the latency probe's 10 ms timer, 300
#: references). The whole GUI suite makes a few hundred thousand such calls; once None's count reaches
#: zero the interpreter aborts mid-run (exit 134, "none_dealloc"), see pytest_unconfigure below.
_NONE_HEADROOM = [None] * 4_000_000


def pytest_sessionfinish(session, exitstatus):
    session.config._spgpt_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without interpreter finalisation, keeping pytest's exit status.

    With every GUI test passed, Python 3.11 has aborted at exit with "Fatal Python error: none_dealloc"
    (exit 134). Some C extension of the Qt / napari stack drops a reference to None it does not own
    on every call; None's count reaches zero only in the final garbage collection, so how many calls
    a run makes decides whether it crashes. Nothing is left to run at that point but Xvfb's shutdown,
    done here because ``os._exit`` skips ``atexit``."""
    status = getattr(config, "_spgpt_exitstatus", None)
    if status is None:
        return
    try:
        import pytest_xvfb

        pytest_xvfb.shutdown_xvfb()
    except Exception:  # noqa: BLE001 - no Xvfb to stop
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@pytest.fixture(scope="session", autouse=True)
def spgpt_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("spgpt_cache")
    old = os.environ.get("SPGPT_CACHE_DIR")
    os.environ["SPGPT_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("SPGPT_CACHE_DIR", None)
    else:
        os.environ["SPGPT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def sample_files(spgpt_cache):
    from napari_spgpt._sample_data import ensure_sample_files

    return ensure_sample_files()


@pytest.fixture
def viewer(make_napari_viewer, sample_files):
    from napari_spgpt._state import get_state

    v = make_napari_viewer()
    state = get_state(v)
    state.spec, state.device = "random:tiny", "cpu"
    return v


@pytest.fixture(autouse=True)
def no_modal_questions(monkeypatch):
    """A modal question would wait forever under Xvfb: unless a test answers it, removing a slide's
    spots layer keeps the slide (the layer is put back), and the question is recorded here."""
    import napari_spgpt._guard as guard

    asked: list[str] = []
    monkeypatch.setattr(guard, "confirm_close", lambda parent, title, text: asked.append(text) or False)
    return asked


@pytest.fixture
def sample_viewer(viewer):
    """A viewer with the sample slide opened through the plugin's sample-data command (the reader)."""
    viewer.open_sample("spgpt", "visium_sample")
    return viewer


@pytest.fixture
def notifications(monkeypatch):
    """Messages shown with napari's show_info / show_warning / show_error, as (level, text)."""
    from napari.utils import notifications as nt

    seen: list[tuple[str, str]] = []

    def recorder(level):
        def show(message, *args, **kwargs):
            seen.append((level, str(message)))
        return show

    for level in ("info", "warning", "error"):
        monkeypatch.setattr(nt, f"show_{level}", recorder(level))
    orig = nt.notification_manager.receive_error

    def receive_error(exctype, value, tb=None, thread=None):
        seen.append(("error", str(value)))

    monkeypatch.setattr(nt.notification_manager, "receive_error", receive_error)
    yield seen
    del orig
