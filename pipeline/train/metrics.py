"""Metrics sinks: `metrics.jsonl` (always) and wandb (offline by default), rank 0 only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


class MetricsLogger:
    def __init__(self, path: Path, cfg: DictConfig, resume_step: int, enabled: bool, run_id: Optional[str] = None):
        self.path, self.enabled, self.wandb = path, enabled, None
        if not enabled:
            return
        self._truncate_after(resume_step)
        if cfg.logger.wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=cfg.logger.project,
                name=f"{cfg.run_name}/{cfg.stage.name}",
                id=run_id or stable_run_id(path.parent),
                resume="allow",
                dir=str(path.parent),
                mode=cfg.logger.wandb_mode,
                config=OmegaConf.to_container(cfg, resolve=True),
            )

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint, so drop their old records. Before any
        checkpoint (`step` 0) every record is from an attempt that will be redone, the step-0 eval
        included: a kill after it was logged once left it twice in the file (RL and the reward models)."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and step > 0 and json.loads(line).get("step", 0) <= step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def stable_run_id(stage_folder: Path) -> str:
    """The same wandb run id for every attempt of a stage, so a resumed stage continues its run."""
    return hashlib.sha1(str(stage_folder.resolve()).encode()).hexdigest()[:12]


def progress_bar(cfg: DictConfig, is_main: bool, total: int, initial: int, desc: str, unit: str = "step"):
    """The progress bar every stage loop shows on rank 0 (`logger.progress=false` turns it off)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not (is_main and cfg.logger.progress),
        dynamic_ncols=True,
    )
