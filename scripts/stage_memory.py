"""Peak memory (RSS of the whole process tree: launcher, trainers, vLLM, verifier and sandbox workers) of
every stage on the embedded default model, at the default batch sizes, for a few steps.

    .venv/bin/python scripts/stage_memory.py [run_name] [sampler]    # -> runs/<run_name>/memory.md

`sampler`: an HF folder stage-3 samples from and fine-tunes (default: this run's stage-2 export, which
after 4 stage-1 steps keeps no samples; a full stage-1 export, e.g. runs/<run>/stage1/export, does).

Each stage runs through the launcher as `make stage-N` does, from the previous stage's export; steps are
cut (the peak is reached in the first steps: the model, optimizer state, vLLM's KV cache and one batch)
and periodic evals are off. The figure is the launcher's `peak_rss_gib` from each stage's manifest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGES = [  # (stage, overrides that only shorten it)
    ("stage1", ["stage.max_steps=4"]),
    ("stage2", ["stage.steps=2", "stage.eval_every=0"]),
    ("stage3", ["stage.max_prompts=64", "stage.max_steps=4"]),
    ("rm_helpful", ["stage.epochs=1"]),
    ("rm_safety", ["stage.epochs=1"]),
    ("stage4", ["stage.steps=2", "stage.eval_every=0"]),
    ("distill", ["stage.max_steps=4", "stage.eval_after=false"]),
    ("eval", ["stage.models=[base,stage2]", "stage.samples=4"]),
]


def main() -> int:
    run = sys.argv[1] if len(sys.argv) > 1 else "memory"
    sampler = [f"stage.init_from={sys.argv[2]}", f"stage.sft_init_from={sys.argv[2]}"] if len(sys.argv) > 2 else []
    rows = []
    for stage, extra in STAGES:
        extra = extra + (sampler if stage == "stage3" else [])
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "pipeline.run.launch", f"stage={stage}", f"run_name={run}", "logger=none"]
        p = subprocess.run(cmd + extra, cwd=REPO)
        seconds = time.perf_counter() - start
        manifest = json.loads((REPO / "runs" / run / stage / "manifest.json").read_text())
        rows.append((stage, p.returncode, manifest.get("peak_rss_gib"), manifest.get("peak_rss_processes"), seconds))
        if p.returncode != 0:
            break
    lines = ["| stage | exit | peak RSS (GiB) | processes | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {rc} | {gib:.2f} | {n} | {sec:.0f} |" for s, rc, gib, n, sec in rows]
    table = "\n".join(lines) + "\n"
    (REPO / "runs" / run / "memory.md").write_text(table)
    print(table)
    return 0 if all(rc == 0 for _, rc, *_ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
