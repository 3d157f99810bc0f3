"""Paths of the real data folder (../shared/data beside the repository), shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"


def data_file(rel: str) -> Path:
    """Path of a file under ../shared/data; skips the test (with the reason) when the folder is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (it is present in CI)")
    p = DATA_DIR / rel
    if not p.exists():
        pytest.fail(f"expected data file {p} is missing from ../shared/data")
    return p
