"""`make pipeline` for real on the tiny model: every stage runs in order and hands its outputs to the
next (stage-1 → stage-2 → stage-3 → reward models → stage-4 → eval), `make status` shows them all
complete, and a second `make pipeline` skips every finished stage (nothing relaunched, no manifest
touched) and reuses every evaluation result."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import warm_start

pytestmark = pytest.mark.integration
pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")

REPO = Path(__file__).resolve().parents[2]
STAGES = ("stage1", "stage2", "stage3", "rm_helpful", "rm_safety", "stage4")
# One-term "sums" (`6 =`): the answer is a copy of the number, which a tiny model warm-started on it gets
# right often enough (~10% of samples at T=1) for stage-3 to keep some. Dotted keys, not a {...} dict:
# ARGS goes through make and the shell unquoted.
TASK = (
    "data.tasks=[chain_sum] data.task_kwargs.chain_sum.min_terms=1 data.task_kwargs.chain_sum.max_terms=1 "
    "data.task_kwargs.chain_sum.max_digits=1"
)


def make(target: str, args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target, f"ARGS={args}"], cwd=REPO, capture_output=True, text=True, timeout=1500
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir, tokenizer):
    base = warm_start(
        tiny_model_dir, tmp_path_factory.mktemp("copy-tiny"), tokenizer, steps=60, p_correct=1.0, task=TASK.split()
    )
    runs = tmp_path_factory.mktemp("runs_pipeline")
    args = (
        f"experiment=smoke model=hf model.path={base} runs_dir={runs} run_name=p "
        f"logger=none logger.progress=false {TASK}"
    )
    p = make("pipeline", args)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return runs / "p", args, p


def test_pipeline_runs_every_stage_in_order(first_run):
    run, _, p = first_run
    for stage in STAGES:
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
    # each stage started from the previous one's export
    for stage, parent in (("stage2", "stage1"), ("stage3", "stage2"), ("stage4", "stage3")):
        inputs = json.dumps(json.loads((run / stage / "manifest.json").read_text())["inputs"])
        assert str(run / parent / "export") in inputs, (stage, inputs)
    order = [p.stdout.index(f"launching p/{s} ") for s in STAGES + ("eval",)]
    assert order == sorted(order)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert list(results) == ["base", "stage1", "stage2", "stage3", "stage4"]
    assert all(results[m]["heldout"]["n"] == 8 for m in results)
    table = (run / "eval" / "results.md").read_text()
    assert all(f"| {m} |" in table for m in results)


def test_status_shows_every_stage_complete(first_run):
    run, args, _ = first_run
    p = make("status", args)
    assert p.returncode == 0, p.stderr
    for stage in STAGES + ("eval",):
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith(f"| {stage} |"))
        assert "complete" in line, line


def test_second_pipeline_skips_finished_stages_and_reuses_eval(first_run):
    run, args, _ = first_run
    before = {s: (run / s / "manifest.json").stat().st_mtime_ns for s in STAGES}
    t0 = time.perf_counter()
    p = make("pipeline", args)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for stage in STAGES:
        assert f"p/{stage} is already complete" in p.stdout, stage
        assert f"launching p/{stage} " not in p.stdout
    assert {s: (run / s / "manifest.json").stat().st_mtime_ns for s in STAGES} == before
    assert p.stdout.count(": cached (") == 5  # base + 4 stages, nothing generated again
    assert seconds < 240, seconds


# 190 s: make test keeps 2-process RL, SFT and stage-4 (test_rl_multiproc, test_stage1_resume, test_stage4_align)
@pytest.mark.slow
def test_every_stage_runs_on_two_processes(first_run, tmp_path):
    """Issue 15: the whole pipeline on 2 processes (gloo): stage-3 shards its sampling over the ranks and
    then trains, the reward models and stage-4 train data-parallel, eval shards its prompts."""
    _, args, _ = first_run
    two = args.replace("run_name=p", "run_name=p2").replace(f"runs_dir={first_run[0].parent}", f"runs_dir={tmp_path}")
    p = make("pipeline", two + " launcher.nproc=2")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    run = tmp_path / "p2"
    for stage in STAGES:
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
        assert "nproc: 2" in Path(manifest["config"]).read_text(), stage
    shards = sorted((run / "stage3" / "data" / "shards").glob("shard_*.stats.json"))
    assert len(shards) >= 2  # both ranks sampled
    one = json.loads((first_run[0] / "eval" / "results.json").read_text())
    both = json.loads((run / "eval" / "results.json").read_text())
    assert list(both) == list(one)
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert strip(both["base"]["heldout"]) == strip(one["base"]["heldout"])  # the same model: the same figures
