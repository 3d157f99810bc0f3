"""State shared by the widgets of one viewer: the loaded model, its spec and device.

The Model widget loads a model and publishes it here; the analysis widgets use it, or load the
current spec themselves (in their worker) when none is loaded yet. Keyed by the viewer (plugins
receive a proxy of it; the proxy and the viewer map to the same state).
torch is imported when a widget asks for the default model, not when napari starts.
"""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal

RANDOM_FALLBACK = "random:small"


def default_spec() -> str:
    """'default' when this build ships a model, else an untrained 'random:small' (issue 6 pending)."""
    try:
        from spgpt_core.checkpoint.pretrained import default_model_dir  # torch: not when napari starts


        return "default" if default_model_dir() is not None else RANDOM_FALLBACK
    except Exception:  # noqa: BLE001 - never break widget creation on this
        return RANDOM_FALLBACK


class SessionState:
    """The model in use. ``model_changed`` fires (main thread) after a model is loaded."""

    model_changed = Signal(object)

    def __init__(self) -> None:
        self.model: Any = None  # spgpt_core.SpGPT
        self.spec: str = default_spec()
        self.device: str = "auto"

    def set_model(self, model, spec: str, device: str) -> None:
        self.model, self.spec, self.device = model, spec, device
        self.model_changed.emit(model)

    def model_for(self, spec: str | None = None, device: str | None = None):
        """The loaded model if it matches, else None (the caller loads ``spec`` in its worker)."""
        if self.model is not None and (spec is None or spec == self.spec) and (device is None or device == self.device):
            return self.model
        return None


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FALLBACK: dict[int, SessionState] = {}


def get_state(viewer) -> SessionState:
    key = getattr(viewer, "__wrapped__", viewer)
    try:
        state = _STATES.get(key)
        if state is None:
            state = _STATES[key] = SessionState()
        return state
    except TypeError:  # not weak-referenceable
        return _FALLBACK.setdefault(id(key), SessionState())
