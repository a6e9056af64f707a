"""Evaluation maths (R1 §3): unbiased pass@k and the majority vote behind cons@k.
tests/unit/test_maths.py pins their numbers."""

from __future__ import annotations

import math
import random


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(keys: list) -> int:
    """Index of the first sample carrying the most frequent non-None key (cons@k), or -1 if none has one.

    Ties go to the key that appeared first, so the vote is deterministic.
    """
    counts: dict = {}
    first: dict = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return -1
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return first[best]


def mcnemar(before: list[bool], after: list[bool]) -> dict:
    """Exact McNemar test of paired verdicts on the same prompts (two-sided binomial on the discordant
    pairs): did `after` get more prompts right than `before` beyond chance? Returns the counts and p."""
    if len(before) != len(after):
        raise ValueError(f"paired verdicts differ in length: {len(before)} vs {len(after)}")
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    return {
        "n": len(before),
        "before": sum(map(bool, before)) / max(1, len(before)),
        "after": sum(map(bool, after)) / max(1, len(after)),
        "gained": gained,
        "lost": lost,
        "p": binomial_two_sided(gained, lost),
    }


def binomial_two_sided(up: int, down: int) -> float:
    """Exact two-sided p of `up` against `down` changes under a fair coin (McNemar's and the sign test's maths)."""
    n = up + down
    tail = sum(math.comb(n, i) for i in range(min(up, down) + 1)) / 2**n if n else 1.0
    return min(1.0, 2 * tail)


def sign_test(before: list[float], after: list[float]) -> dict:
    """Exact two-sided sign test of paired scores on the same prompts (a reward model's score before and
    after training): how many rose and fell (ties dropped), a binomial test on those, and the means."""
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length: {len(before)} vs {len(after)}")
    rose = sum(1 for b, a in zip(before, after) if a > b)
    fell = sum(1 for b, a in zip(before, after) if a < b)
    return {
        "n": len(before),
        "before": sum(before) / max(1, len(before)),
        "after": sum(after) / max(1, len(after)),
        "rose": rose,
        "fell": fell,
        "p": binomial_two_sided(rose, fell),
    }


def paired_permutation_test(before: list[float], after: list[float], resamples: int = 20_000, seed: int = 0) -> float:
    """Two-sided p of the mean paired difference under random sign flips (the null: before and after
    are exchangeable per prompt). Unlike the sign test it weighs a jump of 0.7 above a drift of 0.01.
    Exact over all 2^n flips for n <= 16, else `resamples` seeded draws (with the +1 correction)."""
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length: {len(before)} vs {len(after)}")
    diffs = [a - b for b, a in zip(before, after)]
    observed = abs(sum(diffs)) - 1e-12
    if len(diffs) <= 16:
        hits = 0
        for mask in range(1 << len(diffs)):
            hits += abs(sum(-d if mask >> i & 1 else d for i, d in enumerate(diffs))) >= observed
        return hits / (1 << len(diffs))
    rng = random.Random(seed)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed for _ in range(resamples))
    return (hits + 1) / (resamples + 1)
