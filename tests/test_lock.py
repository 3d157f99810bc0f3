"""constraints.txt, the lock of what CI tested: present, unedited, fitting pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lock.py", tmp_path / "scripts")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path)
    return tmp_path


def check(project: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(project / "scripts" / "lock.py"), "check", *extra],
                          capture_output=True, text=True)


def test_committed_lock_fits_pyproject(project):
    res = check(project)
    assert res.returncode == 0, res.stderr
    lock = (ROOT / "constraints.txt").read_text()
    assert "+cpu" not in lock and not re.search(r"^nvidia-", lock, flags=re.M)
    assert re.search(r"^torch==2\.13\.0$", lock, flags=re.M)


def test_missing_lock_fails_with_the_command_to_regenerate(project):
    (project / "constraints.txt").unlink()
    res = check(project)
    assert res.returncode == 1 and "constraints.txt is missing" in res.stderr
    assert "bash scripts/lock.sh" in res.stderr


def test_hand_edited_pin_fails(project):
    lock = project / "constraints.txt"
    lock.write_text(re.sub(r"^scanpy==\S+$", "scanpy==1.11.4", lock.read_text(), flags=re.M))
    res = check(project)
    assert res.returncode == 1 and "edited by hand" in res.stderr


def test_pyproject_pin_changed_without_regenerating_fails(project):
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"scanpy[leiden]>=1.10,<1.12"', '"scanpy[leiden]>=1.12"'))
    res = check(project)
    assert res.returncode == 1
    assert "scanpy[leiden]>=1.12 is required by pyproject.toml, the lock has scanpy==" in res.stderr


def test_new_dependency_without_regenerating_fails(project):
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"h5py>=3.8",', '"h5py>=3.8",\n    "polars>=1",'))
    res = check(project)
    assert res.returncode == 1 and "polars>=1 is required by pyproject.toml but not locked" in res.stderr


def test_any_requirement_change_asks_for_a_new_lock(project):
    """Even a change the locked versions still satisfy: the lock must come from a resolve of this pyproject."""
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tqdm>=4.60"', '"tqdm>=4.61"'))
    res = check(project)
    assert res.returncode == 1 and "requirements changed since constraints.txt was generated" in res.stderr
