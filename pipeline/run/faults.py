"""Fault injection for resume tests: `R1_FAULT=<point>:<step>` SIGKILLs the process there.

Points: `after_step` (right after optimizer step <step> is logged), `during_save` (after
DeepSpeed wrote checkpoint <step> but before it is marked complete) and `after_shard` (stage-3,
right after its <step>-th generation shard is written). SIGKILL, not an exception:
nothing gets to clean up, exactly like an OOM kill or a pulled plug.
"""

from __future__ import annotations

import os
import signal


def maybe_fault(point: str, step: int) -> None:
    spec = os.environ.get("R1_FAULT", "")
    if not spec:
        return
    want_point, _, want_step = spec.partition(":")
    if want_point == point and int(want_step) == step:
        print(f"[fault injection] SIGKILL at {point}:{step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
