"""Fault injection for resume and guard tests: `R1_FAULT=<point>:<step>`.

Kill points SIGKILL the process there (`maybe_fault`); numerical points (`active`) make the stage
meet a NaN there: `nan_loss` (the step's loss), `nan_grad` (a gradient after the backward pass),
`nan_reward` (one RL reward). `disk_full:<step>` makes checkpoint <step>'s writes fail for real: the
file-size limit (RLIMIT_FSIZE) drops to 16 KiB while it is saved, so the kernel refuses DeepSpeed's and
torch's writes part-way through a file (EFBIG), as a full disk would (ENOSPC).

Kill points, `<point>:<n>`:
* `after_step` - right after optimizer step n is logged;
* `during_save` - DeepSpeed wrote checkpoint n, which is not yet marked complete;
* `rollout` - RL step n's samples are generated and scored, not yet trained on;
* `weight_sync` - RL step n's new weights are in vLLM, the step is not yet counted or saved;
* `after_shard` - stage-3's n-th generation shard and its stats are written;
* `shard_write` - stage-3's n-th shard rows are written, its stats (which mark it done) are not;
* `export` - the n-th export of this process is fully written under `.tmp`, not yet renamed;
* `manifest` - the n-th manifest write of this process is in its temp file, not yet renamed.
The last two count occurrences in the process (`maybe_fault(point)` without a step). SIGKILL, not an exception:
nothing gets to clean up, exactly like an OOM kill or a pulled plug.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

_hits: dict[str, int] = {}


def maybe_fault(point: str, step: int | None = None) -> None:
    """SIGKILL this process if `R1_FAULT` names `point` at `step` (or at its step-th hit when None)."""
    spec = os.environ.get("R1_FAULT", "")
    if not spec:
        return
    if step is None:
        step = _hits[point] = _hits.get(point, 0) + 1
    want_point, _, want_step = spec.partition(":")
    if want_point == point and int(want_step) == step:
        print(f"[fault injection] SIGKILL at {point}:{step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def active(point: str, step: int) -> bool:
    """Is `R1_FAULT` asking for `point` at `step` (a numerical fault: the caller injects the NaN)?"""
    spec = os.environ.get("R1_FAULT", "")
    want_point, _, want_step = spec.partition(":")
    if spec and want_point == point and int(want_step) == step:
        print(f"[fault injection] {point} at step {step}", flush=True)
        return True
    return False


def poison_a_gradient(module) -> None:
    """Set the first gradient that exists to NaN (the `nan_grad` fault)."""
    import torch

    for p in module.parameters():
        if p.grad is not None:
            p.grad.view(-1)[0] = torch.nan
            return


@contextlib.contextmanager
def disk_full(step: int) -> Iterator[None]:
    """Writes fail inside this block when `R1_FAULT=disk_full:<step>` (Unix; no-op otherwise)."""
    if not active("disk_full", step):
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() returns EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
