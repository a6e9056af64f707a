"""Atomic DeepSpeed checkpoints (for resuming a stage) and the final HF export (for the next stage).

A checkpoint is first written under `checkpoints/.staging/<tag>/` (DeepSpeed's files plus the stage's
resume state, `pipeline.train.state`, with one RNG file per rank). Only when every rank has finished
does rank 0 write a `COMPLETE` marker and `os.replace` the folder to `checkpoints/<tag>/`. A kill at
any moment therefore leaves either the previous checkpoints untouched or a half-written staging
folder that resume ignores (and the next save clears). Resume picks the newest folder that has `COMPLETE`.

DeepSpeed checkpoints hold partitioned optimizer state and need the same world size to load;
stages hand each other HF exports instead, which any world size, transformers and vLLM can read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TypeVar

from pipeline.run.faults import maybe_fault

T = TypeVar("T")
MARKER = "COMPLETE"
STAGING = ".staging"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.exists():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.name.startswith("step_") and (p / MARKER).exists())


def latest(ckpt_dir: Path) -> Optional[Path]:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


def save(
    engine,
    ckpt_dir: Path,
    state,
    rank: int,
    barrier: Callable[[], None],
    keep_last: int,
    write_extra: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Collective: every rank calls it. `state` (a TrainState or RLState) saves itself beside the
    engine's files. Returns the committed checkpoint folder."""
    step = state.step
    tag = tag_for(step)
    staging = ckpt_dir / STAGING
    final = ckpt_dir / tag
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of a save that was killed
        staging.mkdir(parents=True, exist_ok=True)
    barrier()
    engine.save_checkpoint(str(staging), tag=tag, save_latest=False)
    state.save(staging / tag, rank)
    if write_extra is not None and rank == 0:  # stage-specific state, e.g. the RL reference model
        write_extra(staging / tag)
    maybe_fault("during_save", step)
    barrier()
    if rank == 0:
        (staging / tag / MARKER).write_text(json.dumps(dataclasses.asdict(state), sort_keys=True) + "\n")
        _fsync_dir(staging / tag)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / tag, final)
        _fsync_dir(ckpt_dir)
        for old in complete_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load(engine, path: Path, rank: int, state_type: type[T]) -> T:
    """Restore weights, optimizer, scheduler, and the stage's state with this rank's RNG."""
    load_path, _ = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
    return state_type.load(path, rank)


def export_hf(engine, tokenizer, out: Path, rank: int, zero_stage: int, barrier: Callable[[], None]) -> None:
    """Write the trained weights as a plain HF folder (safetensors + tokenizer), atomically; LoRA
    adapters are merged into the base weights."""
    from pipeline.train import lora

    module = engine.module
    if lora.is_lora(module):
        state_dict = dict(lora.gathered_merged_weights(module, zero_stage))
        module = module.get_base_model()
    elif zero_stage == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective gather to rank 0
    else:
        state_dict = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())
