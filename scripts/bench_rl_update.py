"""What each change to the GRPO train phase saves: the same first RL step (same prompts, same samples,
since step 1's rollouts come from the init model with the same seeds) trained under each variant.

    make bench-rl-update ARGS="run_name=l1"       # needs that run's stage-1 export
    .venv/bin/python scripts/bench_rl_update.py run_name=l1 [steps=2] [extra overrides...]

Variants (each a real `make stage-2` through the launcher, into runs/<run>/bench_update_<variant>):
  ref       beta = 0.001: a reference model, its forward pass, every sample trained (the old default)
  no_ref    beta = 0: no reference model, every sample trained
  skip      beta = 0 and samples with zero gradient skipped (the new default)
Prints train seconds per sample (time_train / samples) for each, and the share each change saved;
writes runs/<run>/bench_update.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ref": ["stage.beta=0.001", "stage.skip_zero_grad=false"],
    "no_ref": ["stage.beta=0", "stage.skip_zero_grad=false"],
    "skip": ["stage.beta=0", "stage.skip_zero_grad=true"],
}


def run_variant(run: str, name: str, steps: int, extra: list[str]) -> list[dict]:
    stage = f"bench_update_{name}"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run.launch",
        "stage=stage2",
        f"run_name={run}",
        f"stage.name={stage}",
        f"stage.steps={steps}",
        "stage.eval_every=0",
        f"stage.save_every={steps}",
        "stage.dynamic_sampling=false",  # the same batch for every variant, zero-variance groups included
        "logger=none",
        "force=true",
        *VARIANTS[name],
        *extra,
    ]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    path = REPO / "runs" / run / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if '"time_train"' in line]


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("stage."))
    extra = [a for a in argv if a.startswith("stage.")]
    run, steps = opts.get("run_name", "default"), int(opts.get("steps", 2))
    rows = {}
    for name in VARIANTS:
        first = run_variant(run, name, steps, extra)[0]  # step 1: identical samples in every variant
        per_sample = first["time_train"] / first["samples"]
        rows[name] = {
            "time_train": first["time_train"],
            "train_s_per_sample": per_sample,
            "trained_frac": first.get("trained_frac", 1.0),
            "zero_var_group_frac": first["zero_var_group_frac"],
            "reward": first["reward"],
        }
    base = rows["ref"]["train_s_per_sample"]
    print(f"\n{'variant':8} {'train s':>8} {'s/sample':>9} {'saved vs ref':>13} {'trained':>8} {'zero-var':>9}")
    for name, r in rows.items():
        r["saved_vs_ref"] = 1 - r["train_s_per_sample"] / base
        print(
            f"{name:8} {r['time_train']:8.1f} {r['train_s_per_sample']:9.3f} {r['saved_vs_ref']:13.1%} "
            f"{r['trained_frac']:8.0%} {r['zero_var_group_frac']:9.0%}"
        )
    if len({round(r["reward"], 9) for r in rows.values()}) != 1:
        print("warning: the variants' step-1 rewards differ, so their samples differ", flush=True)
    out = REPO / "runs" / run / "bench_update.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
