"""Atomic writes: build a file or a folder beside its target, then rename it into place.

Every writer of spgpt (results, slides, model directories, corpora, training checkpoints, the
plugin's exports) goes through :func:`atomic_path`, so a crash or an error never leaves a half
written target and never removes the previous one::

    with atomic_path(out) as tmp:   # tmp: ".NAME.<tag>.tmp" in out's folder, not created yet
        write_something(tmp)        # a file, or a folder (the writer creates it)
    # on success tmp has replaced out; on any exception tmp is removed, out is untouched

A temporary file replaces the target with one ``os.replace``. A temporary folder cannot be renamed
over an existing one, so an existing target is first renamed aside (``.NAME.<tag>.old``), the new
folder renamed in, and the old one deleted; if the second rename fails the old target is put back.
The caller decides what may be replaced (``overwrite``) and how errors read; the helper only
cleans up and re-raises. The target's folder must exist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds."""
    target = Path(target)
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".{target.name}.{tag}.tmp")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(f"nothing was written to the temporary path {tmp}")
        if tmp.is_dir() and os.path.lexists(target):
            _swap_in(tmp, target, target.with_name(f".{target.name}.{tag}.old"))
        else:
            os.replace(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise


def _swap_in(tmp: Path, target: Path, old: Path) -> None:
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove_path(old)


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it exists (best effort, never raises for a missing path)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
