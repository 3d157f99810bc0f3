"""Run a function in a child process, with progress, cancellation and errors carried across.

Steps that hold Python's GIL for long stretches (numba / pynndescent kNN, igraph Leiden, scikit-learn
mixtures, UMAP) freeze every other thread of the process, a GUI's event loop included. The napari
plugin therefore runs them through :func:`run_in_child` from its worker thread: the function runs in
a fresh Python process, reports progress back through a pipe, and its return value (or exception)
comes back pickled. Cancelling (``progress.cancel()``) terminates the child at once, whatever it is
doing; nothing it computed comes back, so a cancelled job leaves no partial output.

No Qt and no napari here; the function and its arguments must be picklable (module-level functions,
arrays, AnnData objects).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from .errors import Cancelled, SpgptError
from .progress import Progress, ensure_progress

#: seconds between SIGTERM and SIGKILL when a cancelled child does not exit
KILL_AFTER_S = 2.0


class ChildFailed(SpgptError):
    """The child process died without a result (killed for memory, a crash in native code)."""


class _PipeProgress(Progress):
    """The child's Progress: every start / update goes to the parent as a message.

    Updates are sent at most every ``min_interval`` seconds (the last one of a stage always goes),
    so a step reporting per cell does not flood the pipe."""

    def __init__(self, conn, min_interval: float = 0.05):
        super().__init__()
        self._conn = conn
        self._min = min_interval
        self._sent = 0.0

    def start(self, total: int, desc: str = "", unit: str | None = None) -> None:
        super().start(total, desc, unit)  # the unit names a terminal bar's; the plugin's line shows counts
        self._conn.send(("start", (self.total, self.desc)))
        self._sent = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        now = time.monotonic()
        if now - self._sent >= self._min or (self.total and self.done >= self.total):
            self._conn.send(("done", self.done))
            self._sent = now


def send_message(conn, obj) -> None:
    """Send ``obj`` with its large arrays out of band (pickle protocol 5): the pickle holds no array data,
    and the arrays go straight from their memory to the pipe, in writes that release the GIL. (A plain
    ``Connection.send`` first copies everything into one bytes object, holding the GIL: seconds for a
    1M-cell matrix, and so a frozen GUI.)"""

    buffers: list = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    conn.send([len(head), *[r.nbytes for r in raws]])
    conn.send_bytes(head)
    for r in raws:
        conn.send_bytes(r)


def recv_message(conn):
    """The object :func:`send_message` sent; its arrays are writable and were not copied after reading."""
    return _finish_recv(conn, conn.recv())


def _main(job_fd: int, result_fd: int) -> None:
    """The child's loop: read ``sys.path``, then jobs, from ``job_fd`` until it closes (the parent is gone
    or done); answer each on ``result_fd``. Imports and JIT-compiled code stay warm between jobs."""

    jobs, conn = Connection(job_fd, writable=False), Connection(result_fd, readable=False)
    try:
        sys.path[:] = jobs.recv()  # the parent's path, so the job's modules import as they do there
    except EOFError:
        return
    while True:
        try:
            job = recv_message(jobs)
        except EOFError:
            break
        try:
            fn, args, kwargs, wants_progress = job
            if wants_progress:
                kwargs = {**kwargs, "progress": _PipeProgress(conn)}
            result = fn(*args, **kwargs)
            del job, args, kwargs
            send_message(conn, ("result", result))
            del result
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            tb = traceback.format_exc()
            try:
                conn.send(("error", (e, tb)))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send(("error", (RuntimeError(f"{type(e).__name__}: {e}"), tb)))
    conn.close()


class ChildProcess:
    """A Python process that runs jobs one at a time (see :func:`run_in_child`)."""

    def __init__(self) -> None:

        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        code = "import sys; from spgpt_core.child import _main; _main(int(sys.argv[1]), int(sys.argv[2]))"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(job_r), str(res_w)],
                                         pass_fds=(job_r, res_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(job_r)
            os.close(res_w)
        self.jobs = Connection(job_w, readable=False)
        self.results = Connection(res_r, writable=False)  # EOF once the child exits: it holds the only writer
        self.busy = False
        self._send(list(sys.path))

    def _send(self, obj, large: bool = False) -> None:
        try:
            send_message(self.jobs, obj) if large else self.jobs.send(obj)
        except (BrokenPipeError, EOFError, OSError):
            pass  # the child died: reported when its answer is awaited

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, fn: Callable, args: tuple, kwargs: dict, progress: Progress, wants_progress: bool,
            poll_s: float) -> Any:
        name = getattr(fn, "__name__", "the job")
        self.busy = True
        try:
            self._send((fn, args, kwargs, wants_progress), large=True)
            while True:
                if progress.cancelled:
                    self.close()
                    progress.check()  # raises Cancelled with the stage and its counts
                    raise Cancelled("cancelled")
                if not self.results.poll(poll_s):
                    continue
                try:
                    message = self.results.recv()
                    if isinstance(message, list):  # the sizes of a send_message: the result follows
                        message = _finish_recv(self.results, message)
                    kind, payload = message
                except EOFError:
                    code = self.proc.wait()
                    self.close()
                    raise ChildFailed(
                        f"The analysis process for '{progress.desc or name}' stopped without a result (exit code "
                        f"{code}" + ("; killed, most likely for lack of memory" if code in (-9, 137) else "")
                        + "). Free memory (close other slides or programs) or use a smaller slide, then run it "
                        "again.") from None
                if kind == "start":
                    progress.start(*payload)
                elif kind == "done":
                    progress.update(int(payload) - progress.done)
                elif kind == "result":
                    return payload
                elif kind == "error":
                    exc, tb = payload
                    exc.child_traceback = tb
                    raise exc
        except BaseException:
            if not isinstance(sys_exc(), SpgptError) or isinstance(sys_exc(), (Cancelled, ChildFailed)):
                self.close()  # an unexpected failure or a cancel: never reuse a process in an unknown state
            raise
        finally:
            self.busy = False

    def close(self) -> float:
        """Terminate the process (SIGTERM, then SIGKILL after KILL_AFTER_S); the seconds it took."""
        t = stop(self.proc)
        for c in (self.jobs, self.results):
            try:
                c.close()
            except OSError:
                pass
        return t


def _finish_recv(conn, sizes):
    """The rest of a :func:`send_message` whose size list was already read."""

    head = conn.recv_bytes()
    buffers = []
    for n in sizes[1:]:
        buf = bytearray(n)
        conn.recv_bytes_into(buf)
        buffers.append(buf)
    return pickle.loads(head, buffers=buffers)


def sys_exc():

    return sys.exc_info()[1]


def stop(proc, kill_after_s: float = KILL_AFTER_S) -> float:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``kill_after_s``); the seconds it took."""

    t0 = time.perf_counter()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(kill_after_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.perf_counter() - t0


_warm: dict[str, ChildProcess | None] = {"process": None}
_lock = threading.Lock()


def run_in_child(fn: Callable, /, *args: Any, progress: Progress | None = None, poll_s: float = 0.05,
                 keep_warm: bool = True, **kwargs: Any) -> Any:
    """``fn(*args, progress=..., **kwargs)`` in another Python process; its return value.

    The process is a new interpreter (``python -c``), not a ``multiprocessing`` spawn: it never imports
    the parent's ``__main__`` (a user's script that opens napari would open it again). With ``keep_warm`` it
    stays alive for the next job (imports and numba's compiled code stay warm) unless the job was
    cancelled or failed unexpectedly; a second job while it is busy gets a process of its own.

    ``progress``: the parent's :class:`Progress`; the child's progress reports arrive on it (in the
    calling thread) and its cancel flag, polled every ``poll_s`` seconds, terminates the child and
    raises :class:`Cancelled`. Without it ``fn`` is called without a ``progress`` argument. An
    exception raised by ``fn`` is raised here (the child's traceback in its ``child_traceback``)."""
    wants_progress = progress is not None
    progress = ensure_progress(progress)
    with _lock:
        child = _warm["process"] if keep_warm else None
        if child is None or child.busy or not child.alive:
            child = ChildProcess()
            if keep_warm and (_warm["process"] is None or not _warm["process"].alive):
                _warm["process"] = child
        child.busy = True
    try:
        return child.run(fn, args, kwargs, progress, wants_progress, poll_s)
    finally:
        if child is not _warm["process"]:
            child.close()


def shutdown() -> None:
    """Close the warm process (it also exits by itself when this process ends)."""
    with _lock:
        child, _warm["process"] = _warm["process"], None
    if child is not None:
        child.close()
