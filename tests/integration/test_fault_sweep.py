"""Kill every stage many times and resume it (`fault_sweep`): outputs equal an uninterrupted run's.

`make test` runs a short sweep of stage-1 (its named kill points plus one random kill);
`make test-slow` runs every stage with its named points plus `R1_FAULT_KILLS` (default 20) random kills,
drawn from `R1_FAULT_SEED` (default: a fresh seed, printed) so that any failure can be replayed.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import TINY_TASK
from fault_sweep import StageCase, exact, sweep

pytestmark = pytest.mark.integration
pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")

TINY_BENCH = (
    "+stage.catalog.tiny={source: reasoning_gym, tasks: [chain_sum], seed: 90000000, limit: 6, "
    "task_kwargs: {chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}}"
)


def seed() -> int:
    return int(os.environ.get("R1_FAULT_SEED") or random.SystemRandom().randrange(10**6))


def stage1(model: Path) -> StageCase:
    return StageCase(
        "stage1",
        [f"model.path={model}", "model.name=tiny", "data.num_examples=24", "stage.pack_length=512"]
        + ["stage.max_steps=6", "stage.save_every=2", "stage.keep_last=2", "stage.optim.lr=3e-3"],
        named=["during_save:4", "after_step:5", "export:1", "manifest:2"],
    )


def stage2(model: Path) -> StageCase:
    return StageCase(
        "stage2",
        [f"stage.init_from={model}", *TINY_TASK, "stage.steps=4", "stage.prompts_per_step=2", "stage.group_size=4"]
        + ["stage.rollout.max_new_tokens=32", "stage.eval_every=2", "stage.save_every=1", "stage.optim.lr=1e-4"]
        + ["stage.beta=0.001", "data.num_examples=16", "data.eval_examples=4"],
        named=["rollout:2", "weight_sync:3", "during_save:2", "export:1"],
    )


def stage3(model: Path) -> StageCase:
    return StageCase(
        "stage3",
        [f"stage.init_from={model}", f"stage.sft_init_from={model}", "data.num_examples=24", "stage.shard_size=8"]
        + ["stage.samples_per_prompt=8", "stage.rollout.max_new_tokens=32", "stage.pack_length=256"]
        + ["stage.rollout.temperature=1.0", "stage.rollout.top_p=1.0"]  # as test_stage3_rs: some samples kept
        + ["stage.optim.lr=1e-4", "stage.save_every=1", "stage.general.ratio=0.5", *TINY_TASK],
        named=["shard_write:2", "after_shard:1", "during_save:1", "export:1"],
    )


def rm_safety(model: Path) -> StageCase:
    return StageCase(
        "rm_safety",
        [f"stage.init_from={model}", "stage.epochs=2", "stage.optim.lr=3e-4", "stage.save_every=2"],
        named=["during_save:2", "export:1"],
    )


def stage4(model: Path, rm: Path) -> StageCase:
    return StageCase(
        "stage4",
        [f"stage.init_from={model}", "stage.steps=4", "stage.prompts_per_step=2", "stage.group_size=4"]
        + ["stage.general_prompts_per_step=2", "stage.general_last_steps=2", "stage.rollout.max_new_tokens=32"]
        + [f"stage.reward_models.helpfulness={rm}", f"stage.reward_models.harmlessness={rm}"]
        + ["stage.eval_every=4", "stage.save_every=1", "stage.optim.lr=1e-4", "stage.watch_window=2", *TINY_TASK]
        + ["data.num_examples=16", "data.eval_examples=4"],
        named=["rollout:3", "during_save:2"],
    )


def distill(model: Path, stage3_ref: Path) -> StageCase:
    def copy_teacher_manifest(run_dir: Path) -> None:  # distill reads the dataset its run's stage3 names
        (run_dir / "stage3").mkdir()
        shutil.copy(stage3_ref / "manifest.json", run_dir / "stage3" / "manifest.json")

    return StageCase(
        "distill",
        [f"stage.init_from={model}", "stage.pack_length=256", "stage.save_every=1", "stage.optim.lr=1e-4"]
        + ["data.eval_examples=4", *TINY_TASK],
        named=["during_save:1", "export:1"],
        prepare=copy_teacher_manifest,
    )


def evaluate(models: list[Path]) -> StageCase:
    return StageCase(
        "eval",
        ["stage.benchmarks=[tiny]", TINY_BENCH, "stage.samples=3", "stage.max_new_tokens=24"]
        + [f"stage.models=[{','.join(map(str, models))}]"],
        named=["manifest:1"],
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.mark.slow  # 104 s: the fault sweep is the slow tier; make test keeps one kill-and-resume test per stage
def test_stage1_survives_its_named_kill_points_and_a_random_kill(runs, tiny_model_dir):
    case = stage1(tiny_model_dir)
    report = sweep(case, runs / "quick", kills=1, seed=seed(), compare=exact)
    assert len(report.kills) == len(case.named) + 1 and report.resumed_exactly == report.runs


KILLS = int(os.environ.get("R1_FAULT_KILLS", "20"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stage1", "stage2", "stage3", "rm_safety", "stage4", "distill", "eval"])
def test_every_stage_survives_many_random_kills(name, runs, tiny_model_dir, warm_tiny_model_dir):
    slow = runs / "slow"
    if name in ("stage4", "distill"):  # they need a reward model / a stage-3 dataset first
        parent = rm_safety(tiny_model_dir) if name == "stage4" else stage3(warm_tiny_model_dir)
        from fault_sweep import run_to_end

        run_to_end(parent, slow / "parent", name)
        made = parent.dir(slow / "parent", name)
        case = stage4(warm_tiny_model_dir, made / "export") if name == "stage4" else distill(tiny_model_dir, made)
    else:
        case = {
            "stage1": lambda: stage1(tiny_model_dir),
            "stage2": lambda: stage2(warm_tiny_model_dir),
            "stage3": lambda: stage3(warm_tiny_model_dir),
            "rm_safety": lambda: rm_safety(tiny_model_dir),
            "eval": lambda: evaluate([warm_tiny_model_dir, tiny_model_dir]),
        }[name]()
    report = sweep(case, slow / name, kills=KILLS, seed=seed(), compare=exact)
    assert len(report.kills) >= KILLS and report.resumed_exactly == report.runs
