"""Dynamic sampling (DAPO): groups whose rewards are all equal are dropped and refilled from further
prompts. The rollout here is a scripted stand-in that returns fixed texts per prompt, so the refill
bookkeeping can be checked exactly; the real engine runs in the integration tests."""

from __future__ import annotations

import pytest

from pipeline.rl.batch import PromptPool, collect, prompt_index
from pipeline.rl.rewards import RewardContext
from pipeline.rl.rollout import Completion
from pipeline.rl.verify import Verifier
from pipeline.run.config import compose

G = 4


class ScriptedRollout:
    """Prompt i: all samples right if i is even (a flat group), half right if i is odd."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling, **kw):
        n = sampling.n
        self.calls.append([p[0] for p in prompts])
        out = []
        for p in prompts:
            i = p[0]
            right = [True] * n if i % 2 == 0 else [j % 2 == 0 for j in range(n)]
            out.append(
                [
                    Completion(
                        token_ids=[1, 2],
                        logprobs=[0.0, 0.0],
                        truncated=False,
                        text=f"<think>x</think>\\boxed{{{i if ok else -1}}}",
                    )
                    for ok in right
                ]
            )
        return out


@pytest.fixture(scope="module")
def ctx():
    c = RewardContext(verifier=Verifier(workers=1))
    yield c
    c.verifier.close()


def run(ctx, dynamic: bool, rounds: int = 3, oversample: float = 1.0):
    cfg = compose(
        [
            "stage=stage2",
            "stage.prompts_per_step=2",
            f"stage.group_size={G}",
            f"stage.dynamic_sampling={str(dynamic).lower()}",
            f"stage.max_refill_rounds={rounds}",
            f"stage.dynamic_oversample={oversample}",
            "stage.rewards={accuracy: 1.0, format: 0.0, language: 0.0}",
        ]
    )
    records = [{"id": str(i), "question": "q", "answer": str(i), "task": "math", "entry": None} for i in range(12)]
    prompt_ids = [[i] for i in range(12)]
    rollout = ScriptedRollout()
    pool = PromptPool(
        "reasoning", records, prompt_ids, dict(cfg.stage.rewards), lambda step: cfg.stage.prompts_per_step
    )
    batch, cursor = collect(rollout, pool, 0, 0, cfg, ctx, 0, 1, [0])
    order = [prompt_index(c, 12, cfg.stage.seed) for c in range(cursor)]
    return batch, cursor, order, rollout


def test_without_dynamic_sampling_flat_groups_are_kept(ctx):
    batch, cursor, order, _ = run(ctx, dynamic=False)
    assert cursor == 2 and batch.groups == 2 and batch.dropped_groups == 0
    assert batch.zero_var_groups == sum(i % 2 == 0 for i in order)


def test_dynamic_sampling_drops_flat_groups_and_refills(ctx):
    batch, cursor, order, rollout = run(ctx, dynamic=True)
    flat = [i for i in order if i % 2 == 0]
    informative = [i for i in order if i % 2 == 1]
    assert batch.groups == 2 and len(batch.samples) == 2 * G
    assert batch.dropped_groups == len(flat) and batch.prompts_drawn == cursor == len(order)
    assert {int(x.completion.text.split("{")[1].split("}")[0]) for x in batch.samples if x.reward > 0} == set(
        informative[:2]
    )
    assert all(abs(sum(x.advantage for x in batch.samples[g * G : (g + 1) * G])) < 1e-6 for g in range(2))
    assert len(rollout.calls) >= 2 or not flat  # a refill round asked the engine for more prompts


def test_refill_rounds_are_bounded(ctx):
    # with no refill rounds allowed, the flat groups of the first draw are kept as they are
    batch, cursor, order, rollout = run(ctx, dynamic=True, rounds=0)
    assert cursor == 2 and batch.groups == 2 and len(rollout.calls) == 1


def test_over_sampling_fills_the_batch_from_one_larger_vllm_batch(ctx):
    """DAPO-style: draw 2x the prompts still needed in one engine call instead of refilling a few at a time."""
    batch, cursor, order, rollout = run(ctx, dynamic=True, oversample=2.0)
    informative = [i for i in order if i % 2 == 1]
    assert len(rollout.calls[0]) == 4  # 2 prompts needed, 4 drawn at once
    assert batch.groups == 2 and len(batch.samples) == 2 * G
    kept = {int(x.completion.text.split("{")[1].split("}")[0]) for x in batch.samples if x.reward > 0}
    assert kept == set(informative[:2])
    flat_first = sum(i % 2 == 0 for i in order[:4])
    # every group of the first batch is counted once: kept, dropped as flat, or surplus beyond the batch
    assert batch.groups + batch.dropped_groups + batch.surplus_groups == len(order) == batch.prompts_drawn
    assert batch.zero_var_groups == flat_first
