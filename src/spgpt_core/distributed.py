"""torchrun / DDP plumbing shared by pretraining and sharded embedding.

spgpt never schedules processes itself: ``torchrun`` starts them (one node or many, with its own
rendezvous) and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; this module reads them, picks each
process's device (``cuda:LOCAL_RANK`` on GPUs) and opens the process group (NCCL on CUDA, gloo on
CPU). Without torchrun it is one process of one, and nothing is initialised.
"""

from __future__ import annotations

import os

import torch

from .device import resolve_device


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device_pref: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); opens the process group when there are several."""
    rank, world, local = dist_info()
    device = resolve_device(device_pref)
    if world == 1:  # one process: the device as resolved, nothing to initialise
        return rank, world, device
    if device.type == "cuda":  # one GPU per process on its node
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def close(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's contiguous share ``[first, last)`` of ``n`` items; shares differ in size by at most one."""
    return n * rank // world, n * (rank + 1) // world
