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


def stage2(tmp_path, model, run, fault, *extra):
    from conftest import TINY_TASK

    return launch_stage(
        "stage2",
        tmp_path,
        run,
        f"stage.init_from={model}",
        *TINY_TASK,
        "stage.steps=3",
        "stage.prompts_per_step=2",
        "stage.group_size=4",
        "stage.rollout.max_new_tokens=32",
        "stage.eval_every=0",
        "stage.optim.lr=1e-4",
        "stage.rewards={accuracy: 1.0, format: 1.0}",
        "data.num_examples=16",
        "data.eval_examples=4",
        *extra,
        fault=fault,
    )


def test_rl_counts_a_nan_reward_and_gives_its_group_no_advantage(tmp_path, warm_tiny_model_dir):
    p = stage2(tmp_path, warm_tiny_model_dir, "nanr", "nan_reward:2")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = read_metrics(tmp_path / "nanr" / "stage2" / "metrics.jsonl")
    assert [r["nonfinite_rewards"] for r in m] == [0, 1, 0]
    assert all(math.isfinite(r["reward"]) and math.isfinite(r["loss"]) for r in m)


def test_rl_skips_a_nan_gradient_and_can_stop_on_a_nan_reward(tmp_path, warm_tiny_model_dir):
    p = stage2(tmp_path, warm_tiny_model_dir, "nang", "nan_grad:2")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = read_metrics(tmp_path / "nang" / "stage2" / "metrics.jsonl")
    assert [r["nonfinite_skipped"] > 0 for r in m] == [False, True, False]

    p = stage2(tmp_path, warm_tiny_model_dir, "stopr", "nan_reward:1", "stage.optim.on_nonfinite=stop")
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopr/stage2: step 1: non-finite reward"), last


def test_reward_model_training_skips_a_nan_loss(tmp_path, tiny_model_dir):
    p = launch_stage(
        "rm_safety", tmp_path, "rm", f"stage.init_from={tiny_model_dir}", "stage.epochs=1", fault="nan_loss:2"
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = read_metrics(tmp_path / "rm" / "rm_safety" / "metrics.jsonl")
    skipped = [r["nonfinite_skipped"] for r in m if "nonfinite_skipped" in r]
    assert skipped[:3] == [0, 1, 0] and sum(skipped) == 1
    steps = [r for r in m if "nonfinite_skipped" in r]
    assert math.isnan(steps[1]["loss"]) and all(math.isfinite(r["loss"]) for r in steps[2:])
