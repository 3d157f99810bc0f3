"""Combo boxes / lists whose choices the widget changes at run time.

napari calls ``reset_choices()`` on docked magicgui widgets whenever layers change, which puts a
widget built with a fixed list back to that list. These widgets take their choices from a
callable over a list the widget owns, so a reset keeps them.
"""

from __future__ import annotations

_KEEP = object()


def dynamic(cls, initial=(), **kwargs):
    holder = {"items": list(initial)}
    widget = cls(choices=lambda _w: list(holder["items"]), **kwargs)
    widget._spgpt_items = holder
    return widget


def set_choices(widget, items, value=_KEEP) -> None:
    """Replace the choices; keep (or set) the value when it is still a choice."""
    current = widget.value
    widget._spgpt_items["items"] = list(items)
    widget.reset_choices()
    target = current if value is _KEEP else value
    choices = list(widget.choices)
    if isinstance(target, (list, tuple)):
        widget.value = [v for v in target if v in choices]
    elif target is not None and target in choices:
        widget.value = target
