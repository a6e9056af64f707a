"""`make gpu-check`: what a CPU host cannot check, on one CUDA GPU, in under 8 minutes.

1. the `gpu`-marked tests (tests/gpu: vLLM sleep levels, weight sync in bf16, one engine per rank's
   GPU and tensor-parallel rollouts when the machine has 2+ GPUs);
2. a short bf16 pipeline through the launcher, as a user runs it: stage-1, stage-2, train-rm, stage-4
   at `experiment=smoke` sizes with more RL steps;
3. the figures the issues ask for, from the runs' metrics: the rollout/trainer log-prob gap in bf16,
   vLLM sleep + wake time, weight-sync time, generation vs reward-model scoring time.

    make gpu-check                                      # the embedded default model (after make setup)
    make gpu-check ARGS="--model /path/to/hf_folder"    # any HF folder (e.g. on a machine without the GGUF)

Writes runs/<run>/gpu_check.md and prints it last. Each part has a time limit, so a hang costs one part,
not the budget (the lent device has 15 minutes per session, start-up included: run this once).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.run.paths import base_model_dir  # noqa: E402

STAGES = [  # (stage, extra overrides): smoke sizes, a few more RL steps so that timings settle
    ("stage1", ["stage.max_steps=8"]),
    ("stage2", ["stage.steps=4", "stage.prompts_per_step=8", "stage.group_size=8", "stage.rollout.max_new_tokens=128"]),
    ("rm_helpful", []),
    ("rm_safety", []),
    ("stage4", ["stage.steps=4", "stage.rollout.max_new_tokens=128"]),
]


def run(cmd: list[str], limit: int, log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - start


def mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def figures(run_dir: Path) -> list[tuple[str, str]]:
    out = []
    for stage in ("stage2", "stage4"):
        path = run_dir / stage / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "reward" in r][1:] or rows  # step 1 includes compilation and warm-up
        for key, label in (
            ("rollout_logprob_gap", "mean |log pi_vllm - log pi_trainer| (bf16)"),
            ("tis_weight_mean", "TIS weight mean"),
            ("time_generate", "generation s/step"),
            ("time_score", "scoring s/step (all rewards)"),
            ("time_score/general", "reward-model scoring s/step"),
            ("time_train", "train s/step"),
            ("time_sync", "weight sync s/step"),
            ("time_sleep_wake", "vLLM sleep + wake s/step"),
            ("rollout_tok_per_s", "rollout tok/s"),
        ):
            value = mean(rows, key)
            if value is not None:
                out.append((f"{stage}: {label}", f"{value:.4g}"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(base_model_dir()), help="HF folder of the policy (default: embedded)")
    parser.add_argument("--run-name", default="gpu-check")
    parser.add_argument("--runs-dir", default=str(REPO / "runs"))
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; this check is for a GPU machine", file=sys.stderr)
        return 2
    run_dir = Path(args.runs_dir) / args.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# gpu-check on {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU), torch {torch.__version__}",
        "",
    ]
    lines += ["| part | exit | seconds |", "|---|---|---|"]
    failed = []
    if not args.skip_tests:
        rc, sec = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu"], 240, run_dir / "pytest_gpu.log")
        lines.append(f"| pytest -m gpu | {rc} | {sec:.0f} |")
        failed += ["pytest"] if rc else []
    common = [f"run_name={args.run_name}", f"runs_dir={args.runs_dir}", "experiment=smoke", "model=hf"]
    common += [f"model.path={args.model}", "model.dtype=bf16", "logger=none", "logger.progress=false"]
    for stage, extra in STAGES:
        cmd = [sys.executable, "-m", "pipeline.run.launch", f"stage={stage}", *common, *extra]
        rc, sec = run(cmd, 150, run_dir / f"{stage}.log")
        lines.append(f"| {stage} | {rc} | {sec:.0f} |")
        if rc != 0:
            failed.append(stage)
            break
    lines += ["", "| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in figures(run_dir)]
    report = "\n".join(lines) + "\n"
    (run_dir / "gpu_check.md").write_text(report)
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
