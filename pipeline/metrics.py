"""Metrics sinks: `metrics.jsonl` (always) and wandb (offline by default), rank 0 only."""

from __future__ import annotations

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
                project=cfg.logger.project, name=f"{cfg.run_name}/{cfg.stage.name}", id=run_id,
                resume="allow", dir=str(path.parent), mode=cfg.logger.wandb_mode,
                config=OmegaConf.to_container(cfg, resolve=True),
            )

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint, so drop their old records."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
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
