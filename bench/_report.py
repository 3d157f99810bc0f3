"""Writing a benchmark's report: bench/results/NAME.md, the full tables of its last run.

BENCHMARKS.md is written by people and quotes these reports; the benchmarks never edit it.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]


def log_test_run(record: dict, protocol) -> None:
    """Append a test-set run to test_runs.jsonl in the protocol's results folder (results/ for the shipped
    protocol) with its commit and whether the code differed from it (result files do not count)."""
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    head = {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")),
            "time": time.strftime("%Y-%m-%d %H:%M")}
    extra = {} if protocol.shipped else {"protocol": str(protocol.file), "data": str(protocol.data)}
    with (protocol.results / "test_runs.jsonl").open("a") as f:
        f.write(json.dumps({**head, **extra, **record}) + "\n")


def model_suffix(model: str) -> str:
    """The part of a report's file name that says which model ran: none for the shipped default, else
    ``_`` + the run folder's name (``runs/held-out-continual/model`` -> ``_held-out-continual``)."""
    return "" if model == "default" else "_" + Path(model).parent.name


def markdown_table(df) -> str:
    """A DataFrame as a Markdown table: the index first (named by its name, else "pipeline"), floats to 3
    decimals, missing values blank."""
    import pandas as pd

    cols = [df.index.name or "pipeline", *map(str, df.columns)]
    rows = [[str(i), *("" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v) for v in r)]
            for i, r in zip(df.index, df.itertuples(index=False))]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def verdict(means, kinds, default: str, what: str = "mean") -> str:
    """One line: the default's mean against the best same-run baseline's (the issue's bar: at or above it).
    ``means``: pipeline -> mean; ``kinds``: pipeline -> "baseline" / "spgpt"."""
    base = {p: v for p, v in means.items() if kinds.get(p) == "baseline" and v == v}
    if default not in means or not base:
        return ""
    best = max(base, key=base.get)
    d = means[default] - base[best]
    return (f"**Default against the best same-run baseline** ({what}): {means[default]:.3f} against {base[best]:.3f} "
            f"({best}), {d:+.3f}: {'at or above' if d >= 0 else 'below'} it.")


WIDTH = 100


def wrap_markdown(text: str, width: int = WIDTH) -> str:
    """Wrap long prose lines and list items at ``width``; tables, headings and code stay as they are."""
    out, in_code = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code or len(line) <= width or line.lstrip().startswith(("|", "#", "<!--")):
            out.append(line)
            continue
        bullet = re.match(r"^(\s*)([*-] |\d+\. )?", line)
        indent = bullet.group(1) + " " * len(bullet.group(2) or "")
        out.append(textwrap.fill(line.strip(), width, initial_indent=line[: len(line) - len(line.lstrip())],
                                 subsequent_indent=indent, break_long_words=False, break_on_hyphens=False))
    return "\n".join(out)


def write_report(name: str, body: str) -> Path:
    """Replace bench/results/NAME.md with ``body`` (Markdown), prose wrapped for reading."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(wrap_markdown(body.strip()) + "\n")
    return path
