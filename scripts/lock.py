"""The dependency lock (constraints.txt): write it from a resolved environment, or check it.

    python scripts/lock.py write FREEZE.txt     # called by scripts/lock.sh after a fresh resolve
    python scripts/lock.py check                # before installing: the lock exists, is unedited and fits pyproject
    python scripts/lock.py check --installed    # after installing: the environment is exactly the lock, pip check

The lock pins every installed distribution (pip, setuptools and wheel included) to an exact
version, without local version labels (``torch==2.13.0``, not ``+cpu``) and without
``nvidia-*`` packages, so one file serves CPU machines and CUDA machines alike. Its header
records a fingerprint of pyproject.toml's requirements and of its own pins: a requirement added
or changed in pyproject.toml, or a pin edited by hand, fails the check until the lock is
regenerated with ``bash scripts/lock.sh``.

Runs on the standard library plus ``packaging`` (pip's vendored copy when it is not installed),
so it works in a fresh virtual environment before anything else is installed.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a fresh venv has pip, which vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = "spgpt"
REGENERATE = "bash scripts/lock.sh"
EXCLUDE = re.compile(r"^nvidia-")


class LockError(Exception):
    pass


def pyproject_requirements() -> list[Requirement]:
    """Every requirement of the project: dependencies and all extras, self-references left out."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    texts = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        texts += extra
    reqs = [Requirement(t) for t in texts]
    return [r for r in reqs if canonicalize_name(r.name) != PROJECT]


def requirements_fingerprint() -> str:
    texts = sorted({str(r) for r in pyproject_requirements()})
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def _pins_digest(pins: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{n}=={v}" for n, v in sorted(pins.items())).encode()).hexdigest()[:16]


def parse_freeze(text: str) -> dict[str, str]:
    """{canonical name: version} of ``name==version`` lines; local labels (+cpu) dropped."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m is None:
            if line.startswith("-e ") or " @ " in line:  # the editable project itself
                continue
            raise LockError(f"cannot read the pin {line!r}: expected NAME==VERSION")
        name = canonicalize_name(m.group(1))
        if name == PROJECT or EXCLUDE.match(name):
            continue
        pins[name] = m.group(2).split("+", 1)[0]
    return pins


def read_lock() -> tuple[dict[str, str], dict[str, str]]:
    """(header fields, pins) of constraints.txt."""
    if not LOCK.exists():
        raise LockError(f"{LOCK.name} is missing: the install must use the versions CI tested. Regenerate it "
                        f"with `{REGENERATE}` and commit it.")
    text = LOCK.read_text()
    header = dict(re.findall(r"^# ([a-z-]+): (\S+)$", text, flags=re.M))
    return header, parse_freeze(text)


def write(freeze_path: str) -> None:
    pins = parse_freeze(Path(freeze_path).read_text())
    check_satisfies(pins)
    lines = [
        "# The exact versions CI installs and tests (pip constraints). Do not edit by hand:",
        f"# regenerate with `{REGENERATE}` (a fresh resolve of pyproject.toml) and commit.",
        f"# pyproject-requirements: {requirements_fingerprint()}",
        f"# pins: {_pins_digest(pins)}",
        f"# python: {sys.version_info.major}.{sys.version_info.minor}",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"{LOCK.name}: {len(pins)} pins")


def check_satisfies(pins: dict[str, str]) -> None:
    """Every pyproject.toml requirement is in the lock at a version it allows."""
    problems = []
    for req in pyproject_requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is required by pyproject.toml but not locked")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{req} is required by pyproject.toml, the lock has {name}=={pins[name]}")
    if problems:
        raise LockError("\n  ".join([f"{LOCK.name} does not fit pyproject.toml:", *problems,
                                     f"regenerate it with `{REGENERATE}`"]))


def check_static() -> dict[str, str]:
    header, pins = read_lock()
    if header.get("pins") != _pins_digest(pins):
        raise LockError(f"{LOCK.name} was edited by hand (its pins no longer match its header). Change versions "
                        f"by regenerating it with `{REGENERATE}`, not by editing it.")
    if header.get("pyproject-requirements") != requirements_fingerprint():
        check_satisfies(pins)  # the more specific message first, when there is one
        raise LockError(f"pyproject.toml's requirements changed since {LOCK.name} was generated; regenerate it "
                        f"with `{REGENERATE}` and commit both.")
    check_satisfies(pins)
    return pins


def installed() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], check=True, capture_output=True,
                         text=True).stdout
    return parse_freeze(out)


def check_installed(pins: dict[str, str]) -> None:
    have = installed()
    wrong = [f"{n}: installed {have[n]}, locked {v}" for n, v in pins.items() if n in have and have[n] != v]
    missing = [n for n in pins if n not in have]
    extra = [f"{n}=={v}" for n, v in have.items() if n not in pins]
    if wrong or extra:
        raise LockError("\n  ".join([f"the environment differs from {LOCK.name}:", *wrong,
                                     *(f"{e} is installed but not locked" for e in extra),
                                     f"if pyproject.toml gained a dependency, regenerate the lock with `{REGENERATE}`"]))
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if res.returncode != 0:
        raise LockError(f"pip check failed on the locked environment:\n{res.stdout}{res.stderr}")
    note = f" ({len(missing)} locked packages not needed here: {', '.join(missing[:5])})" if missing else ""
    print(f"[lock] environment matches {LOCK.name}: {len(have)} packages, pip check ok{note}")


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["write"] and len(argv) == 2:
            write(argv[1])
        elif argv[:1] == ["check"]:
            pins = check_static()
            if "--installed" in argv:
                check_installed(pins)
            else:
                print(f"[lock] {LOCK.name}: {len(pins)} pins, fits pyproject.toml")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except LockError as e:
        print(f"[lock] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
