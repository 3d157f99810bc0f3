"""The one device policy of spgpt.

* The command line resolves ``--device auto`` once (:func:`resolve_device`) and passes the result on.
* Python functions take ``device=None``: an explicit device is honoured end to end (the model and
  every tensor, Tangram's mapping included); ``None`` means the model's device, or the CPU when no
  model is involved (mapping without embeddings) or a model is loaded from disk.
"""

from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. Asking for CUDA without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    return dev


def choose_device(device: str | torch.device | None, model=None) -> torch.device:
    """An explicit ``device`` if given, else the device of ``model`` (an SpGPT), else the CPU."""
    if device is not None:
        return resolve_device(device)
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")


def out_of_memory(what: str, device, knobs: str) -> InputError:
    """The message for a CUDA out-of-memory error: what ran out and which options make it fit.

    Raised ``from`` the torch error, so ``SPGPT_DEBUG=1`` still shows torch's own account."""
    return InputError(f"the {device} device ran out of memory while {what}; lower {knobs} and run again "
                      "(or use --device cpu, slower but bounded by the machine's memory)")
