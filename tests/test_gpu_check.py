"""bench/gpu_check.sh --dry-run: the GPU check runs end to end on the CPU, so it cannot rot before a GPU runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers.data import ROOT


def _run(*args, tmp_path):
    env = dict(os.environ, SPGPT_PYTHON=sys.executable, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def test_dry_run_fills_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = _run("--dry-run", "--out", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["dry_run"] is True and rep["failed_steps"] == []
    assert {"spgpt", "torch", "python", "numpy"} <= set(rep["versions"])
    assert "cuda_available" in rep["device"]
    steps = rep["steps"]
    assert list(steps) == ["precision", "throughput", "pretrain", "finetune", "domains"]
    assert all(s["ok"] for s in steps.values())
    assert steps["precision"]["cosine_min"] >= 0.99 and steps["precision"]["cells"] > 100
    for size in ("default", "scgpt-human"):
        t = steps["throughput"]["sizes"][size]
        assert t["cells_per_s"] > 0 and t["tokens_per_s"] > t["cells_per_s"]
    pre = steps["pretrain"]
    assert pre["processes"] == 2 and pre["backend"] == "gloo"
    for run in ("single", "torchrun"):
        assert pre[run]["steps"] == 3 and pre[run]["tokens_per_s"] > 0
    # the same steps see the same patches on 1 or 2 processes (the loop's contract): same token count
    assert pre["single"]["tokens_seen"] == pre["torchrun"]["tokens_seen"]
    assert steps["finetune"]["steps"] >= 1
    assert steps["domains"]["domains"] == 3 and steps["domains"]["device"] == "cpu"
    assert -1 <= steps["domains"]["ari_vs_planted"] <= 1
    assert all(math.isfinite(v) for v in _numbers(rep))
    print("gpu_check --dry-run:", rep["total_seconds"], "s")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the real check would run")
def test_without_a_gpu_it_says_so_and_fails(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = _run("--out", str(out), tmp_path=tmp_path)
    assert r.returncode == 2
    assert "no CUDA GPU" in r.stderr and "--dry-run" in r.stderr
    rep = json.loads(out.read_text())
    assert rep["device"]["cuda_available"] is False and "no CUDA GPU" in rep["error"] and rep["steps"] == {}
