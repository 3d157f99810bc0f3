"""Module-level functions for tests/test_child.py (a child process imports them by name)."""

from __future__ import annotations

import time


def double_with_progress(n: int, progress=None) -> int:
    progress.start(n, "counting")
    for _ in range(n):
        time.sleep(0.01)
        progress.update(1)
    return 2 * n


def refuse(progress=None):
    from spgpt_core.errors import InputError

    raise InputError("the slide has no coordinates; add obsm['spatial']")


def spin_holding_the_gil(progress=None):
    progress.start(0, "spinning")
    x = 0
    while True:  # pure Python: holds the child's GIL, never checks for cancel
        x += 1


def die(progress=None):
    import os

    os._exit(3)


def pid(progress=None) -> int:
    import os

    return os.getpid()
