"""Wall time and final figures of stage-1 and stage-2 on 1 process, 2 processes, and 2 "nodes" x 1
process (two launchers on this machine, `launcher.nnodes=2`), side by side.

    .venv/bin/python scripts/bench_scaleout.py [run_prefix] [--model DIR]

Every layout runs the same global batch from the same init, through the launcher as a user would (the
2-node case starts node 1's launcher beside node 0's, as on two hosts). Short runs: the point is the
layouts' cost and agreement, not learning. On a 2-core host 2 processes get 1 thread each, so wall
times show the overhead of splitting, not a speed-up; on GPUs each process has its own device.
Writes runs/<prefix>-scaleout.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.run.paths import base_model_dir  # noqa: E402

STAGES = {
    "stage1": ["stage.max_steps=8", "stage.save_every=4"],
    "stage2": ["stage.steps=3", "stage.prompts_per_step=4", "stage.eval_every=3", "data.eval_examples=64"],
}
FIGURES = {"stage1": ("loss", "grad_norm"), "stage2": ("reward", "loss", "kl", "eval/greedy_accuracy")}
LAYOUTS = {"1 process": 1, "2 processes": 2, "2 nodes x 1": "nodes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(stage: str, run: str, layout, common: list[str]) -> float:
    base = [sys.executable, "-m", "pipeline.run.launch", f"stage={stage}", f"run_name={run}", *common, *STAGES[stage]]
    if stage == "stage2":
        base.append(f"stage.init_from={REPO / 'runs' / run / 'stage1' / 'export'}")
    start = time.perf_counter()
    if layout == "nodes":
        # two "nodes" on one host share its cores: each gets half (real nodes have their own). Without
        # this both launchers take every core and oversubscription, not the layout, sets the time
        nodes = ["launcher.nnodes=2", "launcher.nproc=1", "launcher.master_addr=127.0.0.1"]
        nodes.append(f"launcher.omp_threads={max(1, (os.cpu_count() or 2) // 2)}")
        nodes.append(f"launcher.master_port={free_port()}")
        follower = subprocess.Popen(base + nodes + ["launcher.node_rank=1"], cwd=REPO, stdout=subprocess.DEVNULL)
        rc = subprocess.run(base + nodes + ["launcher.node_rank=0"], cwd=REPO).returncode
        rc = rc or follower.wait()
    else:
        # stage-1's global batch is micro_batch_rows x accumulation x processes: 1 process accumulates 2
        accumulate = ["stage.gradient_accumulation_steps=2"] if stage == "stage1" and layout == 1 else []
        rc = subprocess.run(base + [f"launcher.nproc={layout}"] + accumulate, cwd=REPO).returncode
    if rc:
        raise SystemExit(f"{run}/{stage} failed ({rc})")
    return time.perf_counter() - start


def last(run: str, stage: str, key: str):
    rows = [json.loads(x) for x in (REPO / "runs" / run / stage / "metrics.jsonl").read_text().splitlines()]
    return next((r[key] for r in reversed(rows) if key in r), None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("prefix", nargs="?", default="scaleout")
    parser.add_argument("--model", default=str(base_model_dir()))
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), help=f"a subset of {list(LAYOUTS)}")
    args = parser.parse_args()
    common = [f"model.path={args.model}", "model.dtype=fp32", "logger=none", "logger.progress=false"]
    rows = []
    for name, layout in ((n, LAYOUTS[n]) for n in args.layouts):
        run = f"{args.prefix}-{str(layout).replace(' ', '')}"
        for stage in STAGES:
            seconds = launch(stage, run, layout, common)
            rows.append((stage, name, seconds, {k: last(run, stage, k) for k in FIGURES[stage]}))
    lines = ["| stage | layout | wall s | final figures |", "|---|---|---|---|"]
    for stage, name, seconds, figs in sorted(rows, key=lambda r: r[0]):
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figs.items())
        lines.append(f"| {stage} | {name} | {seconds:.0f} | {shown} |")
    table = "\n".join(lines) + "\n"
    (REPO / "runs" / f"{args.prefix}-scaleout.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
