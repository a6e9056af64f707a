"""Stage 1: cold-start SFT (R1 §2.3.1).

R1 starts RL from a model fine-tuned on a few thousand long chain-of-thought examples, because RL
from the raw base model (R1-Zero) is unstable early and produces unreadable, language-mixed
reasoning. Here the examples are either generated (`data=coldstart`: reasoning-gym tasks with gold
answers, written as step-by-step CoT and verified by the task's scorer) or read from the user's
JSONL / parquet / hub dataset, then checked to be in the R1 format:
`<think>…</think>` followed by a concise answer with `\\boxed{…}`.

Run it with `make stage-1` (which calls `python -m pipeline.run.launch stage=stage1`); the launcher
starts this module under torchrun / deepspeed with `--config <run>/stage1/config.yaml`.
"""

from __future__ import annotations

import time

from pipeline.data import sources as data_lib
from pipeline.run import config as config_lib
from pipeline.run import folders as run_lib
from pipeline.run.errors import run_stage
from pipeline.run.hub import input_path
from pipeline.train import dist as dist_lib
from pipeline.train.sft import train_sft


def prepare_data(cfg, folder, is_main: bool, barrier) -> tuple[list[dict], dict]:
    """Materialise the SFT rows once into the run folder; a resumed run re-reads the same file."""
    path = folder / "data" / "train.jsonl"
    manifest = run_lib.read_manifest(folder) or {}
    recorded = manifest.get("inputs", {}).get("data", {})
    if is_main and not path.exists():
        rows = data_lib.load_rows(cfg.data)
        digest = data_lib.write_jsonl(rows, path)
        source = {"source": cfg.data.source}
        if cfg.data.source == "file":
            src = input_path(cfg.data.path, "data.path")
            source.update(path=str(src), sha256=data_lib.sha256_file(src))
        elif cfg.data.source == "hub":
            source.update(hub_id=cfg.data.hub_id, split=cfg.data.split)
        else:
            source.update(tasks=list(cfg.data.tasks), seed=cfg.data.seed, num_examples=cfg.data.num_examples)
        recorded = {"path": str(path), "sha256": digest, "rows": len(rows), "origin": source}
    barrier()
    if is_main and recorded.get("sha256") and data_lib.sha256_file(path) != recorded["sha256"]:
        raise data_lib.DataError(
            f"{path} changed since this stage started (sha256 mismatch with its manifest); "
            "re-run with force=true to start over"
        )
    return data_lib.read_jsonl(path), recorded


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "stage-1 cold-start SFT")
    folder = config_lib.stage_dir(cfg)
    dist = dist_lib.init()
    init = run_lib.resolve_init(cfg)

    t0 = time.time()
    rows, data_record = prepare_data(cfg, folder, dist.is_main, dist.barrier)
    if dist.is_main:
        run_lib.start_stage(folder, cfg, init=init, data=data_record)
    result = train_sft(cfg, dist, init["path"], rows, folder)
    if dist.is_main:
        summary = {
            "steps": result.steps,
            "first_loss": result.first_loss,
            "final_loss": result.final_loss,
            "tokens_per_s": result.tokens_per_s,
            "train_seconds": result.train_seconds,
            "resumed_from_step": result.resumed_from,
            "wall_seconds_this_attempt": time.time() - t0,
        }
        run_lib.complete_stage(
            folder,
            summary,
            run_lib.model_outputs(folder),
            headline=(f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}, {result.tokens_per_s:.0f} tok/s"),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
