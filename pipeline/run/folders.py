"""Run folders and manifests: how stages find their inputs and announce their outputs.

    runs/<run_name>/<stage>/
        config.yaml        resolved config of this stage
        manifest.json      status, inputs (parent export, data files + sha256), outputs, summary
        metrics.jsonl      one JSON record per logged step
        data/              data this stage materialised (hashed in the manifest)
        checkpoints/       DeepSpeed checkpoints - for resuming *this* stage only
        export/            final HF model folder - what the next stage starts from
        wandb/             offline wandb run

A stage's `init_from` names the previous stage; its export path is read from that stage's
manifest, which must say `complete`. Nothing is guessed from folder names.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from pipeline.run.config import Config, ConfigError, stage_dir
from pipeline.run.faults import maybe_fault
from pipeline.run.hub import input_path
from pipeline.run.paths import absolute
from pipeline.run.registry import make_target

MANIFEST = "manifest.json"


class InputError(RuntimeError):
    """A stage input is missing or unfinished; the message says what to run first."""


def read_manifest(folder: Path) -> Optional[dict]:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: corrupt manifest ({e.msg} at line {e.lineno})") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    """Atomic write: a reader sees the old manifest or the new one, never half of one."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    maybe_fault("manifest")
    os.replace(tmp, folder / MANIFEST)


def update_manifest(folder: Path, **fields: Any) -> dict:
    manifest = read_manifest(folder) or {}
    manifest.update(fields)
    manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_manifest(folder, manifest)
    return manifest


def is_complete(folder: Path) -> bool:
    m = read_manifest(folder)
    return bool(m) and m.get("status") == "complete"


def resolve_init(cfg: DictConfig, key: str = "init_from") -> dict:
    """Where this stage's weights start: {'kind': base|stage|path, 'path': <HF folder>, ...}.
    `key` names the stage config field holding the source (stage-3 has two: sampler and SFT start)."""
    return resolve_source(cfg, cfg.stage[key], f"stage.{key}", cfg.stage.name)


def resolve_source(cfg: DictConfig, src: str, key: str, who: str) -> dict:
    """A model named by "base", a stage name of this run (via its manifest), or an HF folder path."""
    if src == "base":
        path = input_path(cfg.model.path, "model.path")
        if not (path / "config.json").exists():
            hint = "run `make setup` first" if cfg.model.name.startswith("smollm2") else "check model.path"
            raise InputError(f"base model not found at {path} (config key 'model.path'); {hint}")
        _check_tokenizer(path, "model.path")
        return {"kind": "base", "path": str(path), "model": cfg.model.name}
    if "/" not in src and not src.startswith("."):
        parent = stage_dir(cfg).parent / src
        how = make_target(src)
        manifest = read_manifest(parent)
        if manifest is None:
            raise InputError(
                f"{who} starts from {src} of run '{cfg.run_name}', which has not run: "
                f"run `{how}` first (no {parent / MANIFEST})"
            )
        if manifest.get("status") != "complete":
            raise InputError(
                f"{who} starts from {src} of run '{cfg.run_name}', which is "
                f"{manifest.get('status', 'unfinished')}: finish it with `{how}` first"
            )
        export = Path(manifest["outputs"]["export"])
        if not (export / "config.json").exists():
            raise InputError(
                f"{parent / MANIFEST} names export {export}, which is missing; re-run `{how} ARGS=force=true`"
            )
        return {"kind": "stage", "stage": src, "path": str(export), "manifest": str(parent / MANIFEST)}
    path = input_path(src, key)
    if not (path / "config.json").exists():
        raise InputError(f"config key '{key}': {path} is not an HF model folder (no config.json)")
    _check_tokenizer(path, key)
    return {"kind": "path", "path": str(path)}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _check_tokenizer(path: Path, key: str) -> None:
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise InputError(
            f"config key '{key}': {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the weights"
        )


def run_dir_from_args(argv: list[str], who: str) -> Path:
    """The run folder named by `run_name=`/`runs_dir=` among a make target's ARGS (`make status`,
    `make report`). Other config overrides are accepted and ignored, so the ARGS of a `make pipeline`
    can be passed unchanged; an unknown top-level key is still an error (a typo)."""
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    known = {f.name for f in fields(Config)}
    unknown = sorted(k for k in opts if k.lstrip("+~").split(".")[0] not in known)
    if unknown:
        raise ConfigError(f"{who}: unknown config key(s) {unknown}; it reads run_name= and runs_dir=")
    return absolute(opts.get("runs_dir", "runs")) / opts.get("run_name", "default")


def start_stage(folder: Path, cfg: DictConfig, **inputs: Any) -> None:
    """Record in the manifest that the stage is running, with what it started from."""
    update_manifest(
        folder,
        stage=cfg.stage.name,
        kind=cfg.stage.kind,
        status="running",
        config=str(folder / "config.yaml"),
        inputs=inputs,
    )


def model_outputs(folder: Path) -> dict[str, str]:
    """What a training stage hands on: its HF export, its metrics and its own checkpoints."""
    return {
        "export": str(folder / "export"),
        "metrics": str(folder / "metrics.jsonl"),
        "checkpoints": str(folder / "checkpoints"),
    }


def complete_stage(folder: Path, summary: dict, outputs: dict[str, str], headline: str = "") -> None:
    """Mark the stage complete in its manifest (rank 0, after the export is written) and say so."""
    update_manifest(folder, status="complete", summary=summary, outputs=outputs)
    where = f"; export: {outputs['export']}" if "export" in outputs else ""
    print(f"{folder.name} complete: {headline or summary}{where}", flush=True)
