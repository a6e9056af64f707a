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
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()


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
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)
