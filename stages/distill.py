"""Distillation (R1 §2.4): SFT of a student model on stage-3's dataset, then a held-out check.

R1 distilled its reasoning into Qwen and Llama models with SFT alone (no RL), on the ~800k samples of
its rejection-sampling stage. Here the student is `stage.init_from` (any HF causal-LM folder; the
embedded default distils into a fresh copy of the base model), the data is the dataset stage-3
wrote and named in its manifest (`stage.dataset_from`), and the trainer is the stage-1/3 SFT
trainer (`pipeline.train.sft.train_sft`, resumable). After training, the student's export is evaluated on
the run's held-out RL prompts with `pipeline.eval.protocol` (greedy accuracy, pass@1 over k samples), and
the figures go into the manifest; `make eval` compares it with every stage side by side.

    make distill                                           # after make stage-3
    make distill ARGS="stage.init_from=/models/Qwen2.5-0.5B-Instruct experiment=gpu"
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.data import sources as data_lib
from pipeline.run import config as config_lib
from pipeline.run import folders as run_lib
from pipeline.run.errors import run_stage
from pipeline.run.registry import make_target
from pipeline.train import dist as dist_lib
from pipeline.train.sft import train_sft


def teacher_dataset(cfg) -> tuple[Path, dict]:
    """The dataset file named by the `dataset_from` stage's manifest, checked against its hash."""
    src = cfg.stage.dataset_from
    parent = config_lib.stage_dir(cfg).parent / src
    manifest = run_lib.read_manifest(parent)
    how = make_target(src)
    if manifest is None or manifest.get("status") != "complete":
        raise run_lib.InputError(f"distill needs the dataset of {src} of run '{cfg.run_name}': run `{how}` first")
    path = Path(manifest["outputs"]["dataset"])
    info = json.loads(Path(manifest["outputs"]["dataset_info"]).read_text())
    if data_lib.sha256_file(path) != info["sha256"]:
        raise data_lib.DataError(f"{path} changed since {src} wrote it (sha256 mismatch with dataset_info.json)")
    return path, info


def evaluate_student(cfg, export: Path, dist) -> dict:
    from pipeline.data.prompts import load_prompts
    from pipeline.eval.protocol import R1_EVAL_TEMPERATURE, R1_EVAL_TOP_P, evaluate_model
    from pipeline.rl.rewards import RewardContext
    from pipeline.rl.rollout import Sampling
    from pipeline.rl.verify import Verifier

    stage = cfg.stage
    ctx = RewardContext(verifier=Verifier(workers=2))
    try:
        ((_, metrics, _),) = evaluate_model(
            str(export),
            {"heldout": load_prompts(cfg.data, "eval")},
            ctx,
            system_prompt=cfg.data.system_prompt,
            seed=stage.seed,
            sampling=Sampling(stage.eval_samples, R1_EVAL_TEMPERATURE, R1_EVAL_TOP_P, stage.eval_max_new_tokens),
            rank=dist.rank,
            world=dist.world,  # every rank generates its share of the prompts
        )
    finally:
        ctx.verifier.close()
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "distillation SFT")
    stage = cfg.stage
    folder = config_lib.stage_dir(cfg)
    dist = dist_lib.init()
    student = run_lib.resolve_init(cfg)
    path, info = teacher_dataset(cfg)
    t0 = time.time()
    if dist.is_main:
        run_lib.start_stage(
            folder, cfg, init=student, dataset={"path": str(path), "version": info["version"], "sha256": info["sha256"]}
        )
    rows = [{"messages": r["messages"]} for r in data_lib.read_jsonl(path)]
    result = train_sft(cfg, dist, student["path"], rows, folder)
    student_eval = evaluate_student(cfg, folder / "export", dist) if stage.eval_after else {}
    if dist.is_main:
        summary = {
            "steps": result.steps,
            "first_loss": result.first_loss,
            "final_loss": result.final_loss,
            "rows": len(rows),
            "student_eval": student_eval,
            "wall_seconds_this_attempt": time.time() - t0,
        }
        run_lib.complete_stage(
            folder,
            summary,
            run_lib.model_outputs(folder),
            headline=(f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}; held-out {student_eval}"),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
