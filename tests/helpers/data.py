"""The real data folder (../shared/data beside the repository), as the tests reach it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT.parent / "shared" / "data"


def data_file(rel: str) -> Path:
    """Path of a file under ../shared/data; skips the test (with the reason) when the folder is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (it is present in CI)")
    p = DATA_DIR / rel
    if not p.exists():
        pytest.fail(f"expected data file {p} is missing from ../shared/data")
    return p


def all_h5ad() -> list:
    """Every .h5ad under ../shared/data (relative paths), for ``pytest.mark.parametrize``."""
    if not DATA_DIR.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"real data folder {DATA_DIR} is absent"))]
    return sorted(str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*.h5ad"))
