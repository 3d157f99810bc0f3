"""The ``spgpt`` command line: one subcommand per analysis, each a thin wrapper over the Python API.

Errors a user can fix print one ``error:`` line (exit code 2) instead of a traceback; Ctrl-C
cancels cleanly (exit code 130). ``SPGPT_DEBUG=1`` shows full tracebacks.

Heavy modules (torch, scanpy, the analyses) are imported inside each command so ``spgpt --help`` stays fast.
"""


from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .._version import __version__
from ..errors import SpgptError

log = logging.getLogger("spgpt")


# Each module adds its subcommands with register(subparsers); order = order in `spgpt --help`.
COMMAND_MODULES = ["demo", "embed", "analysis", "train", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spgpt", description="spgpt: scGPT-spatial foundation model for spatial "
                                     "transcriptomics. Run `spgpt COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"spgpt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


class _AboveTheBar(logging.StreamHandler):
    """Log lines printed above a running progress bar (``tqdm.write``), not into the bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise
            self.handleError(record)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        handlers=[_AboveTheBar(sys.stderr)])
    for noisy in ("anndata", "numba", "h5py", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if getattr(args, "device", None) is not None:
            from ..device import resolve_device  # imports torch: not for --help or bad flags

            args.device = str(resolve_device(args.device))  # 'auto' resolved once, honoured by every step after
        args.func(args)
    except SpgptError as e:
        if os.environ.get("SPGPT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
