"""NaN guards in a real stage-1 run: a NaN loss or gradient is skipped and counted, or stops the run
with one line, as `stage.optim.on_nonfinite` says."""

from __future__ import annotations

import math

import pytest
from conftest import launch_stage

from pipeline.train.metrics import read_metrics

pytestmark = pytest.mark.integration


def stage1(tmp_path, model, run, fault, *extra):
    return launch_stage(
        "stage1",
        tmp_path,
        run,
        f"model.path={model}",
        "model.name=tiny",
        "data.num_examples=12",
        "stage.pack_length=256",
        "stage.max_steps=4",
        "stage.optim.lr=3e-3",
        *extra,
        fault=fault,
    )


def test_a_nan_loss_is_skipped_and_counted(tmp_path, tiny_model_dir):
    p = stage1(tmp_path, tiny_model_dir, "skip", "nan_loss:2")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = read_metrics(tmp_path / "skip" / "stage1" / "metrics.jsonl")
    assert [r["nonfinite_skipped"] for r in m] == [0, 1, 0, 0]
    assert math.isnan(m[1]["loss"]) and all(math.isfinite(r["loss"]) for r in (m[0], m[2], m[3]))


def test_a_nan_gradient_can_stop_the_run_with_one_line(tmp_path, tiny_model_dir):
    p = stage1(tmp_path, tiny_model_dir, "stop", "nan_grad:3", "stage.optim.on_nonfinite=stop", "stage.save_every=1")
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stop/stage1: step 3: non-finite loss or gradient") and "intact" in last
    assert [r["step"] for r in read_metrics(tmp_path / "stop" / "stage1" / "metrics.jsonl")] == [1, 2]
