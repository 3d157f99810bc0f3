"""A simulated GPU for device-policy tests: ``torch.cuda.is_available`` says True and every attempt
to put a module or tensor on CUDA is recorded and stopped (raises :class:`WentToCuda`)."""

from __future__ import annotations

import torch


class WentToCuda(Exception):
    pass


FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "zeros_like",
             "ones_like", "empty_like", "from_numpy")


def install(monkeypatch) -> list[str]:
    """A GPU 'is present'; returns the list of attempted moves to CUDA (each also raises WentToCuda)."""
    seen: list[str] = []

    def guard(what, device):
        if device is not None and "cuda" in str(device):
            seen.append(f"{what} -> {device}")
            raise WentToCuda(seen[-1])

    def device_of(args, kwargs):
        dev = kwargs.get("device")
        if dev is None and args and isinstance(args[0], (str, torch.device)):
            dev = args[0]
        return dev

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module_to, tensor_to = torch.nn.Module.to, torch.Tensor.to

    def patched_module_to(self, *args, **kwargs):
        guard(f"{type(self).__name__}.to", device_of(args, kwargs))
        return module_to(self, *args, **kwargs)

    def patched_tensor_to(self, *args, **kwargs):
        guard("Tensor.to", device_of(args, kwargs))
        return tensor_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", patched_module_to)
    monkeypatch.setattr(torch.Tensor, "to", patched_tensor_to)
    for name in FACTORIES:
        orig = getattr(torch, name)

        def factory(*args, _orig=orig, _name=name, **kwargs):
            guard(f"torch.{_name}", kwargs.get("device"))
            return _orig(*args, **kwargs)

        monkeypatch.setattr(torch, name, factory)
    return seen
