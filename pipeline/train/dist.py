"""Process-group set-up shared by every stage: DeepSpeed on CUDA (nccl) or CPU (gloo)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, *values: float) -> list[float]:
        return all_sum(*values)


def world_size() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def _reduce(values: list[float], op: str) -> list[float]:
    """Element-wise all-reduce (`op`: a ReduceOp name) in float64, on the backend's device; one process:
    the values themselves."""
    if world_size() == 1:
        return list(values)
    backend = torch.distributed.get_backend()
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if backend == "nccl" else "cpu")
    torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
    return t.tolist()


def all_max(*values: float) -> list[float]:
    """Element-wise max over every rank."""
    return _reduce(list(values), "MAX")


def all_sum(*values: float) -> list[float]:
    """Element-wise sum over every rank (also `Dist.all_sum`, for code that holds no `Dist`)."""
    return _reduce(list(values), "SUM")


def all_true(flag: bool) -> bool:
    """True only if `flag` is True on every rank: ranks that must take the same branch agree on it."""
    return _reduce([0.0 if flag else 1.0], "MAX")[0] == 0.0


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; one process: `[obj]`."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies, so a killed launcher or torchrun never leaves
    an orphaned trainer writing into the run folder while a resumed attempt runs (PR_SET_PDEATHSIG;
    torchrun starts workers in their own sessions, so a process-group kill does not reach them)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def init() -> Dist:
    """Initialise DeepSpeed's process group. Run under torchrun or the deepspeed launcher."""
    die_with_parent()
    cpu = os.environ.get("DS_ACCELERATOR") == "cpu" or not torch.cuda.is_available()
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import deepspeed.ops

    # The shared-memory comm op is compiled on first use (minutes on a laptop) and buys nothing
    # for one process; mark it incompatible so deepspeed.comm skips building it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.utils.logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cpu:
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    folder = os.environ.get("R1_STAGE_DIR")  # set by the launcher (pipeline.run.errors.STAGE_DIR_ENV)
    if folder:  # several nodes: every rank must see the run folder rank 0 writes
        from pathlib import Path

        from pipeline.run.cluster import check_shared_folder

        check_shared_folder(Path(folder), rank, int(os.environ.get("LOCAL_WORLD_SIZE", world)), world)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)
