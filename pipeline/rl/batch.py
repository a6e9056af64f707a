"""Rollout collection: draw prompts, sample groups with vLLM, score them, turn rewards into advantages.

Determinism for exact resume: prompts come from a seeded, epoch-shuffled order read through a cursor
(saved in `RLState`), and every request's sampling seed is a hash of (seed, step, prompt draw index).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from pipeline.rl import maths
from pipeline.rl.rewards import RewardContext, score
from pipeline.rl.rollout import Completion, Sampling, request_seed


def prompt_index(cursor: int, n: int, seed: int) -> int:
    """The cursor-th prompt of an endless sequence of seeded shuffles of range(n)."""
    epoch, position = divmod(cursor, n)
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order[position]


@dataclass
class Sample:
    prompt_ids: list[int]
    completion: Completion
    reward: float
    advantage: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)  # reward components, unweighted
    pool: str = "reasoning"


@dataclass
class Batch:
    samples: list[Sample]
    groups: int
    zero_var_groups: int  # before any refill
    dropped_groups: int  # removed by dynamic sampling
    prompts_drawn: int
    gen_seconds: float
    score_seconds: float


@dataclass
class PromptPool:
    """A prompt set with its own reward weights and schedule (stage-4 routes reasoning and general
    prompts to different rewards); stage-2 has one pool."""

    name: str
    records: list[dict]
    prompt_ids: list[list[int]]  # the records' prompts, tokenised with the chat template
    weights: dict[str, float]
    per_step: Callable[[int], int]  # prompts drawn at a step (over all ranks)
    seed_offset: int = 0  # keeps the pools' sampling seeds and prompt orders apart


def merge(batches: list[Batch]) -> Batch:
    return Batch(
        [x for b in batches for x in b.samples],
        sum(b.groups for b in batches),
        sum(b.zero_var_groups for b in batches),
        sum(b.dropped_groups for b in batches),
        sum(b.prompts_drawn for b in batches),
        sum(b.gen_seconds for b in batches),
        sum(b.score_seconds for b in batches),
    )


def _score_groups(
    pool: PromptPool, indices: list[int], completions: list[list[Completion]], group_size: int, ctx: RewardContext
) -> list[list[Sample]]:
    """Score every completion with the pool's rewards; one list of samples per prompt."""
    texts = [c.text for group in completions for c in group]
    records = [pool.records[i] for i in indices for _ in range(group_size)]
    total, parts = score(texts, records, dict(pool.weights), ctx)
    groups = []
    for g, i in enumerate(indices):
        span = slice(g * group_size, (g + 1) * group_size)
        groups.append(
            [
                Sample(
                    prompt_ids=pool.prompt_ids[i],
                    completion=c,
                    reward=r,
                    parts={k: v[span][j] for k, v in parts.items()},
                    pool=pool.name,
                )
                for j, (c, r) in enumerate(zip(completions[g], total[span]))
            ]
        )
    return groups


def collect(
    rollout,
    pool: PromptPool,
    cursor: int,
    step: int,
    cfg: DictConfig,
    ctx: RewardContext,
    rank: int,
    world: int,
    stop_ids: list[int],
) -> tuple[Batch, int]:
    """Generate and score `pool`'s groups for one step; with dynamic sampling refill zero-variance groups.
    Returns the batch and the pool's new cursor."""
    stage = cfg.stage
    per_rank = pool.per_step(step) // world
    seed = stage.seed + pool.seed_offset
    sampling = Sampling(stage.group_size, stage.rollout.temperature, stage.rollout.top_p, stage.rollout.max_new_tokens)
    kept: list[list[Sample]] = []
    zero_var = dropped = drawn = 0
    gen_seconds = score_seconds = 0.0
    for refill_round in range(stage.max_refill_rounds + 1 if stage.dynamic_sampling else 1):
        need = per_rank - len(kept)
        if need <= 0:
            break
        # every rank draws the same global prompt positions and takes its own slice
        draws = [cursor + j * world + rank for j in range(need)]
        cursor += need * world
        drawn += need * world
        indices = [prompt_index(d, len(pool.records), seed) for d in draws]
        start = time.perf_counter()
        completions = rollout.generate(
            [pool.prompt_ids[i] for i in indices],
            sampling,
            seeds=[request_seed(seed, step, d) for d in draws],
            stop_token_ids=stop_ids,
        )
        generated = time.perf_counter()
        groups = _score_groups(pool, indices, completions, stage.group_size, ctx)
        score_seconds += time.perf_counter() - generated
        gen_seconds += generated - start
        for group in groups:
            rewards = torch.tensor([x.reward for x in group])
            flat = bool(maths.zero_variance_groups(rewards, stage.group_size)[0])
            zero_var += flat and refill_round == 0
            if stage.dynamic_sampling and flat and refill_round < stage.max_refill_rounds:
                dropped += 1
                continue
            advantages = maths.group_advantages(
                rewards, stage.group_size, scale_by_std=stage.scale_by_std, std_floor=stage.adv_std_floor
            )
            for x, a in zip(group, advantages.tolist()):
                x.advantage = a
            kept.append(group)
    samples = [x for group in kept for x in group]
    return Batch(samples, len(kept), zero_var, dropped, drawn, gen_seconds, score_seconds), cursor
