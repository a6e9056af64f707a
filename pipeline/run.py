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

from pipeline.config import Config, ConfigError, stage_dir
from pipeline.paths import absolute

MANIFEST = "manifest.json"

# Which make target produces which stage, for "run X first" messages.
MAKE_TARGETS = {"stage1": "make stage-1", "stage2": "make stage-2", "stage3": "make stage-3", "stage4": "make stage-4",
               "rm_helpful": "make train-rm", "rm_safety": "make train-rm",
               "distill": "make distill"}


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
        path = absolute(cfg.model.path)
        if not (path / "config.json").exists():
            hint = "run `make setup` first" if cfg.model.name.startswith("smollm2") else "check model.path"
            raise InputError(f"base model not found at {path} (config key 'model.path'); {hint}")
        return {"kind": "base", "path": str(path), "model": cfg.model.name}
    if "/" not in src and not src.startswith("."):
        parent = stage_dir(cfg).parent / src
        how = MAKE_TARGETS.get(src, f"stage {src}")
        manifest = read_manifest(parent)
        if manifest is None:
            raise InputError(f"{who} starts from {src} of run '{cfg.run_name}', which has not run: "
                             f"run `{how}` first (no {parent / MANIFEST})")
        if manifest.get("status") != "complete":
            raise InputError(f"{who} starts from {src} of run '{cfg.run_name}', which is "
                             f"{manifest.get('status', 'unfinished')}: finish it with `{how}` first")
        export = Path(manifest["outputs"]["export"])
        if not (export / "config.json").exists():
            raise InputError(f"{parent / MANIFEST} names export {export}, which is missing; re-run `{how} ARGS=force=true`")
        return {"kind": "stage", "stage": src, "path": str(export), "manifest": str(parent / MANIFEST)}
    path = absolute(src)
    if not (path / "config.json").exists():
        raise InputError(f"config key '{key}': {path} is not an HF model folder (no config.json)")
    return {"kind": "path", "path": str(path)}


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
