"""Per-step RL metrics: rewards by component, lengths, group statistics, the update's figures."""

from __future__ import annotations

import re

from pipeline.rl.batch import Batch
from pipeline.rl.rewards import RM_REWARDS
from pipeline.rl.update import UpdateStats

REFLECTION_WORDS = (
    "wait",
    "verify",
    "re-check",
    "recheck",
    "double-check",
    "let me check",
    "mistake",
    "reconsider",
    "however",
    "actually",
)
_REFLECTION_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def reflection_count(text: str) -> int:
    return len(_REFLECTION_RE.findall(text))


def batch_metrics(batch: Batch, stats: UpdateStats) -> dict:
    """Per-step metrics; a reward component is averaged over the samples it scored (with routed pools,
    accuracy covers reasoning prompts only and the RM scores general prompts only; on a mixed task
    list, accuracy covers the maths prompts and `reward/code` the code prompts)."""
    samples = batch.samples
    n = max(1, len(samples))
    lengths = [len(x.completion.token_ids) for x in samples] or [0]
    metrics = {
        "reward": sum(x.reward for x in samples) / n,
        "response_len_mean": sum(lengths) / n,
        "response_len_max": max(lengths),
        "truncated_frac": sum(x.completion.truncated for x in samples) / n,
        "reflection_per_response": sum(reflection_count(x.completion.text) for x in samples) / n,
        "zero_var_group_frac": batch.zero_var_groups
        / max(1, batch.groups + batch.dropped_groups + batch.surplus_groups),
        "samples": len(samples),
        "groups": batch.groups,
        "dropped_groups": batch.dropped_groups,
        "surplus_groups": batch.surplus_groups,
        "loss": stats.loss,
        "kl": stats.kl,
        "clip_frac": stats.clip_frac,
        "entropy": stats.entropy,
        "rollout_logprob_gap": stats.rollout_logprob_gap,
        # mean -log π_rollout(sampled token) over every response token: an unbiased estimate of the
        # sampling policy's per-token entropy, covering all samples (`entropy` covers the trained ones)
        "entropy_sampled": _sampled_entropy(samples),
        "tis_weight_mean": stats.tis_weight_mean,
        "tis_capped_frac": stats.tis_capped_frac,
        "trained_frac": stats.trained_frac,
        "nonfinite_skipped": stats.nonfinite_skipped,
        "padded_passes": stats.padded_passes,
        "nonfinite_rewards": batch.nonfinite_rewards,
    }
    names = sorted({k for x in samples for k, v in x.parts.items() if v is not None})
    for name in names:
        values = [x.parts[name] for x in samples if x.parts.get(name) is not None]
        metrics[f"reward/{name}"] = sum(values) / len(values)
        if name in RM_REWARDS:  # the RM score distribution, to see it drift or saturate
            mean = metrics[f"reward/{name}"]
            metrics[f"reward/{name}_std"] = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
            metrics[f"reward/{name}_min"], metrics[f"reward/{name}_max"] = min(values), max(values)
    if "accuracy" in names:
        metrics["accuracy"] = metrics["reward/accuracy"]
    pools = sorted({x.pool for x in samples})
    if len(pools) > 1 or (pools and pools[0] != "reasoning"):
        for p in pools:
            metrics[f"samples/{p}"] = sum(x.pool == p for x in samples)
    return metrics


# How one step's per-rank figures combine into the logged one (see `reduce_over_ranks`).
SUMMED = {
    "samples",
    "groups",
    "dropped_groups",
    "surplus_groups",
    "nonfinite_rewards",
    "padded_passes",
    "loss",
    "kl",
    "clip_frac",
}
AGREED = {"nonfinite_skipped"}  # every rank skips the same steps (guards agree), so any rank's count is the count


def reduce_over_ranks(metrics: dict) -> dict:
    """The step's metrics over every rank's samples, on every rank (one process: unchanged).

    Counts add up; `loss`, `kl` and `clip_frac` add up too, because each rank's figure is its share of
    the global minibatch (the update's denominators are global); `*_max` / `*_min` take the max / min;
    every other figure is a mean, weighted by each rank's samples. Sample means (reward, accuracy,
    lengths) are therefore exact; token means (entropy, logprob gap, TIS weight) are weighted by
    samples rather than tokens, within a few per cent of the token-weighted value.
    """
    from pipeline.train.dist import all_gather_objects, world_size

    if world_size() == 1:
        return metrics
    gathered = all_gather_objects(metrics)
    weights = [max(1, m.get("samples", 1)) for m in gathered]
    out = {}
    for key in {k for m in gathered for k in m}:
        values = [(m[key], w) for m, w in zip(gathered, weights) if isinstance(m.get(key), (int, float))]
        if not values:
            continue
        if key in SUMMED or key.startswith("samples/"):
            out[key] = sum(v for v, _ in values)
        elif key in AGREED or key.endswith("_max"):
            out[key] = max(v for v, _ in values)
        elif key.endswith("_min"):
            out[key] = min(v for v, _ in values)
        else:
            out[key] = sum(v * w for v, w in values) / sum(w for _, w in values)
    return out


def _sampled_entropy(samples) -> float:
    logprobs = [lp for x in samples for lp in x.completion.logprobs]
    return -sum(logprobs) / len(logprobs) if logprobs else 0.0
