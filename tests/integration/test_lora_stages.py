"""LoRA through the launcher: stage-1 trains adapters and exports a merged plain HF folder; stage-2 trains
adapters from it, vLLM samples from the merged policy at every step, and the KL reference is the base
with the adapters off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_TASK, launch_stage

from pipeline.train.metrics import read_metrics

pytestmark = pytest.mark.integration
pytest.importorskip("peft")
LORA = ("model.lora.rank=8", "model.lora.alpha=16")


def plain_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs-lora")


@pytest.fixture(scope="module")
def stage1(runs, warm_tiny_model_dir):
    p = launch_stage(
        "stage1",
        runs,
        "lora",
        f"model.path={warm_tiny_model_dir}",
        "model.name=tiny",
        "data.num_examples=16",
        "stage.pack_length=512",
        "stage.max_steps=4",
        "stage.optim.lr=1e-2",
        "stage.optim.warmup_steps=0",
        *LORA,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return runs / "lora" / "stage1"


def test_sft_with_lora_exports_merged_weights(stage1, warm_tiny_model_dir):
    base, merged = plain_weights(warm_tiny_model_dir), plain_weights(stage1 / "export")
    assert merged.keys() == base.keys()  # plain HF names: no lora_A / base_layer keys
    changed = {k for k in base if not (merged[k] == base[k]).all()}
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert changed and all(k.endswith(tuple(f"{t}.weight" for t in targets)) for k in changed)  # only adapted ones
    losses = [r["loss"] for r in read_metrics(stage1 / "metrics.jsonl")]
    assert losses[-1] < losses[0]


def test_grpo_with_lora_syncs_merged_weights_and_uses_the_base_as_reference(runs, warm_tiny_model_dir):
    p = launch_stage(
        "stage2",
        runs,
        "lora-rl",
        f"stage.init_from={warm_tiny_model_dir}",
        *TINY_TASK,
        *LORA,
        "stage.steps=3",
        "stage.prompts_per_step=2",
        "stage.group_size=4",
        "stage.num_minibatches=2",
        "stage.beta=0.05",
        "stage.optim.lr=1e-2",
        "stage.optim.warmup_steps=0",
        "stage.rollout.max_new_tokens=32",
        "stage.mask_truncated=false",
        "stage.eval_every=0",
        "stage.save_every=1",
        "data.num_examples=8",
        "data.eval_examples=4",
        "stage.rewards={accuracy: 1.0, format: 1.0, language: 0.1}",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    stage = runs / "lora-rl" / "stage2"
    m = read_metrics(stage / "metrics.jsonl")
    assert all(r["trained_frac"] > 0 and r["nonfinite_skipped"] == 0 for r in m)  # it did train
    # vLLM sampled from the merged adapters at every step: a broken merge or sync shows up as a gap
    assert all(r["rollout_logprob_gap"] < 1e-4 for r in m)
    assert 0 <= m[0]["kl"] < m[-1]["kl"]  # the reference (adapters off) stayed where the policy started
    assert not any(f.name == "ref.safetensors" for f in (stage / "checkpoints").rglob("*"))  # no copy saved
    before, after = plain_weights(warm_tiny_model_dir), plain_weights(stage / "export")
    assert after.keys() == before.keys() and any(not (after[k] == before[k]).all() for k in before)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete"
