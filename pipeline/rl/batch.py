"""Rollout collection: draw prompts, sample groups with vLLM, score them, turn rewards into advantages.

Determinism for exact resume: prompts come from a seeded, epoch-shuffled order read through a cursor
(saved in `RLState`), and every request's sampling seed is a hash of (seed, step, prompt draw index).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from pipeline.rl import maths
from pipeline.rl.rewards import RewardContext, score
from pipeline.rl.rollout import Completion, Sampling, request_seed
from pipeline.run import faults
from pipeline.train.dist import all_max
from pipeline.train.guards import NonFiniteError


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
    surplus_groups: int = 0  # informative groups beyond the batch size (dynamic sampling's over-sampling)
    nonfinite_rewards: int = 0  # NaN/inf rewards met; their groups got no advantage (pipeline.train.guards)


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
    std_floor: float | None = None  # the pool's advantage std floor; None: stage.adv_std_floor


def merge(batches: list[Batch]) -> Batch:
    return Batch(
        [x for b in batches for x in b.samples],
        sum(b.groups for b in batches),
        sum(b.zero_var_groups for b in batches),
        sum(b.dropped_groups for b in batches),
        sum(b.prompts_drawn for b in batches),
        sum(b.gen_seconds for b in batches),
        sum(b.score_seconds for b in batches),
        sum(b.surplus_groups for b in batches),
        sum(b.nonfinite_rewards for b in batches),
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
    """Generate and score `pool`'s groups for one step; returns the batch and the pool's new cursor.

    With dynamic sampling (DAPO), groups whose rewards are all equal are dropped and the batch is filled
    from further prompts. Each round draws `dynamic_oversample` times the prompts still needed in one
    vLLM batch, as DAPO over-samples, instead of refilling a few prompts at a time (a small batch keeps
    vLLM's throughput low); informative groups beyond the batch size are discarded (`surplus_groups`).
    In the last allowed round flat groups are kept, so the batch is always full. On several processes
    each rank fills its own share of the batch, drawing as many prompts per round as the rank that needs
    the most (a rank already full keeps the extra groups as surplus).
    """
    stage = cfg.stage
    per_rank = pool.per_step(step) // world
    rounds = stage.max_refill_rounds + 1 if stage.dynamic_sampling else 1
    kept: list[list[Sample]] = []
    counts = {"zero_var": 0, "dropped": 0, "surplus": 0, "drawn": 0, "nonfinite": 0}
    gen_seconds = score_seconds = 0.0
    for refill_round in range(rounds):
        # ranks draw in lockstep (the most any rank still needs), so the pool's cursor, which counts
        # prompts drawn over all ranks, is the same on every rank and in the checkpoint
        need = int(all_max(float(per_rank - len(kept)))[0])
        if need <= 0:
            break
        draw = math.ceil(need * stage.dynamic_oversample) if stage.dynamic_sampling else need
        groups, cursor, seconds = _draw_groups(rollout, pool, cursor, draw, step, cfg, ctx, rank, world, stop_ids)
        gen_seconds, score_seconds = gen_seconds + seconds[0], score_seconds + seconds[1]
        counts["drawn"] += draw * world
        if groups and faults.active("nan_reward", step + 1):
            groups[0][0].reward = float("nan")
        for group in groups:
            counts["nonfinite"] += _neutralise_nonfinite(group, stage.optim.on_nonfinite, step)
            rewards = torch.tensor([x.reward for x in group])
            flat = bool(maths.zero_variance_groups(rewards, stage.group_size)[0])
            counts["zero_var"] += flat and refill_round == 0
            if len(kept) >= per_rank:
                counts["surplus"] += 1
            elif stage.dynamic_sampling and flat and refill_round < rounds - 1:
                counts["dropped"] += 1
            else:
                floor = stage.adv_std_floor if pool.std_floor is None else pool.std_floor
                advantages = maths.group_advantages(
                    rewards, stage.group_size, scale_by_std=stage.scale_by_std, std_floor=floor
                )
                for x, a in zip(group, advantages.tolist()):
                    x.advantage = a
                kept.append(group)
    samples = [x for group in kept for x in group]
    batch = Batch(
        samples,
        len(kept),
        counts["zero_var"],
        counts["dropped"],
        counts["drawn"],
        gen_seconds,
        score_seconds,
        counts["surplus"],
        counts["nonfinite"],
    )
    return batch, cursor


def _neutralise_nonfinite(group: list[Sample], policy: str, step: int) -> int:
    """A NaN/inf reward (a reward model gone wrong, a broken verifier) must not become an advantage:
    with `stop` the run ends saying so; with `skip` the group's rewards are all set to 0, so it is flat
    and carries no gradient. Returns how many non-finite rewards the group had."""
    bad = [x for x in group if not math.isfinite(x.reward)]
    if not bad:
        return 0
    if policy == "stop":
        parts = {k: v for k, v in bad[0].parts.items() if v is not None and not math.isfinite(v)}
        raise NonFiniteError(
            f"step {step + 1}: non-finite reward {parts or bad[0].reward} for a {bad[0].pool} prompt; stopped as "
            "stage.optim.on_nonfinite=stop asks (skip gives such groups no advantage)"
        )
    for x in group:
        x.reward = 0.0
        x.parts = {k: v if v is None or math.isfinite(v) else None for k, v in x.parts.items()}
    return len(bad)


def _draw_groups(
    rollout,
    pool: PromptPool,
    cursor: int,
    draw: int,
    step: int,
    cfg: DictConfig,
    ctx: RewardContext,
    rank: int,
    world: int,
    stop_ids: list[int],
) -> tuple[list[list[Sample]], int, tuple[float, float]]:
    """`draw` prompts for this rank (every rank draws the same global positions and takes its own slice),
    sampled in one vLLM batch and scored: (groups, new cursor, (generate seconds, score seconds))."""
    stage = cfg.stage
    seed = stage.seed + pool.seed_offset
    draws = [cursor + j * world + rank for j in range(draw)]
    indices = [prompt_index(d, len(pool.records), seed) for d in draws]
    sampling = Sampling(stage.group_size, stage.rollout.temperature, stage.rollout.top_p, stage.rollout.max_new_tokens)
    start = time.perf_counter()
    completions = rollout.generate(
        [pool.prompt_ids[i] for i in indices],
        sampling,
        seeds=[request_seed(seed, step, d) for d in draws],
        stop_token_ids=stop_ids,
    )
    generated = time.perf_counter()
    groups = _score_groups(pool, indices, completions, stage.group_size, ctx)
    return groups, cursor + draw * world, (generated - start, time.perf_counter() - generated)
