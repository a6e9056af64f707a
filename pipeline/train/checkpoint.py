"""Atomic DeepSpeed checkpoints (for resuming a stage) and the final HF export (for the next stage).

A checkpoint is first written under `checkpoints/.staging/<tag>/` (DeepSpeed's files plus the stage's
resume state, `pipeline.train.state`, with one RNG file per rank). Only when every rank has finished
does rank 0 write a `COMPLETE` marker and `os.replace` the folder to `checkpoints/<tag>/`. A kill at
any moment therefore leaves either the previous checkpoints untouched or a half-written staging
folder that resume ignores (and the next save clears). Resume picks the newest folder that has `COMPLETE`.

A save that cannot be written (a full disk, a quota) removes its staging folder and raises
`CheckpointWriteError`, a one-line user error that names the checkpoint still intact: freeing space
and re-running resumes from it. The export is written the same way (`.tmp`, then `os.replace`).

A checkpoint also records its topology (`topology.json`: processes, ZeRO stage, accumulation steps), so
a stage can resume on a different number of processes. Under ZeRO 0-2 DeepSpeed writes its optimizer
partitions in the elastic layout (`elastic_checkpoint`), which it re-partitions on load; the stage
keeps the global batch by rescaling the accumulation steps (`resume_grad_accum`), and a rank without
an RNG file of its own takes rank 0's. ZeRO-3 checkpoints shard the weights too and are refused at a
new world size, with the way out in the message. Stages hand each other HF exports, which any world
size, transformers and vLLM can read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TypeVar

from pipeline.run.faults import disk_full, maybe_fault

T = TypeVar("T")
MARKER = "COMPLETE"
STAGING = ".staging"


_TORCH_WRITE_MARKERS = ("inline_container", "PytorchStreamWriter", "write failed", "failed writing")


class CheckpointWriteError(RuntimeError):
    """A checkpoint or export could not be written (most often a full disk); earlier ones are intact."""


def is_write_failure(error: BaseException) -> bool:
    """OSError (ENOSPC, EDQUOT, EFBIG, EIO...) anywhere in the chain, or torch's C++ writer, which reports
    a short write as a RuntimeError from its zip container ("unexpected pos ...", "file write failed")."""
    while error is not None:
        if isinstance(error, OSError):
            return True
        text = str(error)
        if isinstance(error, RuntimeError) and any(m in text for m in _TORCH_WRITE_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _free_space(path: Path) -> str:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 2**30:.2f} GiB free there"
    except OSError:
        return "free space unknown"


def write_failure(what: str, where: Path, error: BaseException, intact: Optional[Path]) -> CheckpointWriteError:
    reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else " ".join(str(error).split())
    kept = (
        f"checkpoint {intact.name} is intact: free space, then run the same command again to resume from it"
        if intact is not None
        else "no earlier checkpoint exists: free space, then run the same command again to start this stage over"
    )
    return CheckpointWriteError(
        f"could not write {what} in {where} ({reason[:200]}; {_free_space(where)}); "
        f"the partial copy was removed and {kept}"
    )


TOPOLOGY = "topology.json"


def topology(engine) -> dict:
    return {
        "world": int(engine.dp_world_size),
        "zero_stage": int(engine.zero_optimization_stage()),
        "grad_accum": int(engine.gradient_accumulation_steps()),
    }


def saved_topology(path: Path) -> Optional[dict]:
    """The topology a checkpoint was written with (None for checkpoints older than the record)."""
    file = path / TOPOLOGY
    return json.loads(file.read_text()) if file.exists() else None


def resume_grad_accum(ckpt_dir: Path, grad_accum: int, world: int) -> int:
    """Accumulation steps that keep the global batch of the checkpoint this stage would resume from:
    `grad_accum` itself unless the world size changed. Raises CheckpointTopologyError when no whole
    number of steps does."""
    last = latest(ckpt_dir)
    saved = saved_topology(last) if last is not None else None
    if saved is None or saved["world"] == world:
        return grad_accum
    rows = saved["world"] * saved["grad_accum"]
    if saved["zero_stage"] == 3:
        raise CheckpointTopologyError(
            f"{last} was written by {saved['world']} processes under ZeRO-3, which shards the weights: resume it "
            f"with launcher.nproc={saved['world']}, or start a new stage from its weights"
        )
    if rows % world:
        raise CheckpointTopologyError(
            f"{last} was written by {saved['world']} processes x {saved['grad_accum']} accumulation steps "
            f"(a global batch of {rows} rows); {world} processes cannot keep it: "
            f"use a launcher.nproc that divides {rows}"
        )
    return rows // world


class CheckpointTopologyError(RuntimeError):
    """A checkpoint cannot be resumed at this world size."""


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
    try:
        with disk_full(step):
            engine.save_checkpoint(str(staging), tag=tag, save_latest=False)
            state.save(staging / tag, rank)
            if rank == 0:
                (staging / tag / TOPOLOGY).write_text(json.dumps(topology(engine), sort_keys=True) + "\n")
            if write_extra is not None and rank == 0:  # stage-specific state, e.g. the RL reference model
                write_extra(staging / tag)
            maybe_fault("during_save", step)
            barrier()
            if rank == 0:
                (staging / tag / MARKER).write_text(json.dumps(dataclasses.asdict(state), sort_keys=True) + "\n")
                _fsync_dir(staging / tag)
    except Exception as e:
        if not is_write_failure(e):
            raise
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise write_failure(f"checkpoint {tag}", ckpt_dir, e, latest(ckpt_dir)) from e
    if rank == 0:
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
    saved, now = saved_topology(path), topology(engine)
    if saved is not None and saved["world"] != now["world"]:
        if saved["zero_stage"] == 3 or now["zero_stage"] == 3:
            raise CheckpointTopologyError(
                f"{path} was written by {saved['world']} processes (ZeRO-{saved['zero_stage']}); ZeRO-3 cannot "
                f"change the world size: resume with launcher.nproc={saved['world']}"
            )
        if rank == 0:
            print(
                f"resuming {path.name} written by {saved['world']} processes x {saved['grad_accum']} accumulation "
                f"steps on {now['world']} x {now['grad_accum']} (same global batch; DeepSpeed re-partitions the "
                "optimizer state)",
                flush=True,
            )
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
        try:
            module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        except Exception as e:
            if not is_write_failure(e):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure("the export", out.parent, e, latest(out.parent / "checkpoints")) from e
        maybe_fault("export")
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
