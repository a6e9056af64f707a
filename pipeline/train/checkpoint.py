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
a stage can resume on a different number of processes: a ZeRO-0 checkpoint holds the whole optimizer
state and loads as it is; a ZeRO-1/2 one is converted once into DeepSpeed's universal format
(`universal_for`, `ds_to_universal`), which DeepSpeed re-partitions on load. The stage keeps the global
batch by rescaling the accumulation steps (`resume_grad_accum`), and a rank without an RNG file of its
own takes rank 0's. ZeRO-3 checkpoints, and a change of ZeRO stage, are refused with the way out in the
message. Stages hand each other HF exports, which any world size, transformers and vLLM can read.
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
    cause: Optional[BaseException] = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno:
        reason = os.strerror(cause.errno)
    else:  # torch's zip writer only says "unexpected pos ..." when the kernel refused part of a write
        reason = "a write was cut short"
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
        raise _zero3_refusal(last, saved)
    if rows % world:
        raise CheckpointTopologyError(
            f"{last} was written by {saved['world']} processes x {saved['grad_accum']} accumulation steps "
            f"(a global batch of {rows} rows); {world} processes cannot keep it: "
            f"use a launcher.nproc that divides {rows}"
        )
    return rows // world


class CheckpointTopologyError(RuntimeError):
    """A checkpoint cannot be resumed at this world size."""


def _zero3_refusal(path: Path, saved: dict) -> CheckpointTopologyError:
    return CheckpointTopologyError(
        f"{path} was written by {saved['world']} processes under ZeRO-3, which shards the weights: resume it "
        f"with launcher.nproc={saved['world']}, or start a new stage from its weights"
    )


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
        shutil.rmtree(ckpt_dir / ".universal", ignore_errors=True)  # a world-size change's copy: resumed past it
        for old in complete_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def universal_for(path: Path, world: int, zero_stage: int, rank: int, barrier: Callable[[], None]) -> Optional[Path]:
    """Collective. Where DeepSpeed must load `path` from when the world size changed: None when it can
    load the checkpoint as written (same world size, or ZeRO-0, whose optimizer state is whole), else
    a universal copy (ZeRO-1/2), converted once by rank 0 with DeepSpeed's `ds_to_universal`."""
    saved = saved_topology(path)
    if saved is None or saved["world"] == world:
        return None
    if saved["zero_stage"] != zero_stage:
        raise CheckpointTopologyError(
            f"{path} was written under ZeRO-{saved['zero_stage']}; resume it with deepspeed=zero{saved['zero_stage']}"
        )
    if zero_stage == 3:
        raise _zero3_refusal(path, saved)
    if zero_stage == 0:
        return None
    out = path.parent / ".universal" / path.name
    if rank == 0 and not (out / MARKER).exists():
        import subprocess
        import sys

        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(path)]
        cmd += ["--output_folder", str(out), "--inject_missing_state", "--num_extract_workers", "1"]
        done = subprocess.run(cmd + ["--num_merge_workers", "1"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed on {path}: {done.stderr[-2000:]}")
        (out / MARKER).write_text("{}\n")
    barrier()
    return out.parent


def load(engine, path: Path, rank: int, state_type: type[T], universal: Optional[Path] = None) -> T:
    """Restore weights, optimizer, scheduler, and the stage's state with this rank's RNG; `universal`:
    the folder of the checkpoint's universal copy (`universal_for`), at another world size."""
    saved, now = saved_topology(path), topology(engine)
    if saved is not None and saved["world"] != now["world"] and rank == 0:
        how = "from a universal copy" if universal is not None else "(ZeRO-0: the optimizer state is whole)"
        print(
            f"resuming {path.name} written by {saved['world']} processes x {saved['grad_accum']} accumulation "
            f"steps on {now['world']} x {now['grad_accum']}, {how}",
            flush=True,
        )
    load_path, _ = engine.load_checkpoint(
        str(universal or path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
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
