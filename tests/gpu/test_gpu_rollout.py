"""GPU checks (marker `gpu`): written for the lent H200 / a multi-GPU node; CPU CI skips them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TASK, launch_stage

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("level", [1, 2])
def test_stage2_on_one_gpu_sleeps_and_syncs(tmp_path, warm_tiny_model_dir, level):
    p = launch_stage(
        "stage2",
        tmp_path,
        f"g{level}",
        f"stage.init_from={warm_tiny_model_dir}",
        *TINY_TASK,
        "model.dtype=bf16",
        "stage.steps=2",
        "stage.prompts_per_step=2",
        "stage.group_size=4",
        "stage.eval_every=0",
        f"stage.rollout.sleep_level={level}",
        "data.num_examples=16",
        "data.eval_examples=4",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / f"g{level}" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rollout_logprob_gap"] < 0.05 for r in rows)  # bf16: vLLM and the trainer agree after sync


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_each_rank_samples_on_its_own_gpu(tmp_path, warm_tiny_model_dir):
    p = launch_stage(
        "stage2",
        tmp_path,
        "two",
        f"stage.init_from={warm_tiny_model_dir}",
        *TINY_TASK,
        "launcher.nproc=2",
        "deepspeed=zero2",
        "stage.steps=2",
        "stage.prompts_per_step=4",
        "stage.group_size=4",
        "stage.eval_every=0",
        "data.num_examples=16",
        "data.eval_examples=4",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "two" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["samples"] == 16 and all(r["rollout_logprob_gap"] < 0.05 for r in rows)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tensor_parallel_rollouts_over_two_gpus(tmp_path, warm_tiny_model_dir):
    """stage.rollout.tensor_parallel_size=2 on 2 ranks: one vLLM engine sharded over both GPUs; the two
    ranks submit the union of their prompts and each trains on its own (the same samples as TP 1)."""
    common = [f"stage.init_from={warm_tiny_model_dir}", *TINY_TASK, "launcher.nproc=2", "deepspeed=zero2"]
    common += ["stage.steps=1", "stage.prompts_per_step=4", "stage.group_size=4", "stage.eval_every=0"]
    common += ["data.num_examples=16", "data.eval_examples=4", "model.dtype=fp32"]
    figures = {}
    for tp in (1, 2):
        p = launch_stage("stage2", tmp_path, f"tp{tp}", *common, f"stage.rollout.tensor_parallel_size={tp}")
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        rows = [json.loads(x) for x in (tmp_path / f"tp{tp}" / "stage2" / "metrics.jsonl").read_text().splitlines()]
        figures[tp] = rows[-1]
    assert figures[2]["samples"] == figures[1]["samples"] == 16
    assert figures[2]["response_len_mean"] == pytest.approx(figures[1]["response_len_mean"], rel=0.2)
    assert figures[2]["rollout_logprob_gap"] < 0.05
