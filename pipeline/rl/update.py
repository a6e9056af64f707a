"""The GRPO update: `num_minibatches` optimizer steps on one rollout batch (torchtitan's
train_step -> forward_backward_step shape: `update` -> `minibatch_step` -> `row_forward_backward`).

Each minibatch is processed one packed row at a time: forward, loss scaled to the row's share of the
minibatch loss (`maths.chunk_weight`), backward, and a single optimizer step at the end, so memory
holds one row's autograd graph, not the minibatch's (32 samples of ~250 tokens held ~14 GB on CPU at
once, and longer outputs were OOM-killed).

Samples that contribute exactly zero gradient get no forward or backward pass (`stage.skip_zero_grad`):
a fully masked sample (truncated, with `mask_truncated`), and at beta = 0 a sample whose advantage is 0
(a zero-variance group, or a reward equal to its group's mean). The loss denominators still count them
(`Minibatch.total_seqs`, `scored_tokens`), so the gradient is the same as without the skip
(tests/unit/test_rl_update.py). A minibatch with nothing to train still takes its optimizer step, on
zero gradients, as it would without the skip (Adam's moments move the weights even then).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import DictConfig

from pipeline.rl import maths
from pipeline.rl.batch import Sample
from pipeline.run import faults
from pipeline.train import guards
from pipeline.train.dist import all_max, all_sum, world_size

# The minibatch order of step t is a shuffle seeded with seed * SALT + t; a prime multiplier keeps
# the (seed, step) pairs of different runs from mapping to the same shuffle.
MINIBATCH_ORDER_SALT = 7919


def pack_rows(samples: list[Sample], max_tokens: int) -> list[list[int]]:
    """Indices of `samples` grouped into packed rows of at most `max_tokens` (a longer sample gets its own row)."""
    rows: list[list[int]] = []
    used = 0
    for i, x in enumerate(samples):
        n = len(x.prompt_ids) + len(x.completion.token_ids)
        if not rows or (used + n > max_tokens and rows[-1]):
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def row_logprobs(
    model, row: list[Sample], temperature: float, device: torch.device, with_entropy: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample log-probs of the response tokens (and entropies) from one padding-free packed row.

    Logits are computed only at the positions that predict response tokens (`logits_to_keep`), so
    prompt tokens cost a forward pass but no vocabulary projection.
    """
    ids, pos, keep, targets, spans = [], [], [], [], []
    for x in row:
        seq = x.prompt_ids + x.completion.token_ids
        off, p, r = len(ids), len(x.prompt_ids), len(x.completion.token_ids)
        ids += seq
        pos += list(range(len(seq)))
        spans.append((len(keep), r))
        keep += list(range(off + p - 1, off + p + r - 1))
        targets += x.completion.token_ids
    out = model(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([pos], device=device),
        use_cache=False,
        logits_to_keep=torch.tensor(keep, device=device),
    )
    logits = out.logits[0]
    lp = maths.gather_logprobs(logits, torch.tensor(targets, device=device), temperature)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = maths.token_entropy(logits / temperature)
    logps = [lp[start : start + r] for start, r in spans]
    ents = [ent[start : start + r] for start, r in spans] if ent is not None else []
    return logps, ents


def packed_logprobs(
    model, samples: list[Sample], temperature: float, device: torch.device, max_tokens: int
) -> list[torch.Tensor]:
    """Per-sample response log-probs over packed rows (used without gradients: old and reference policy).
    A ZeRO-3 model gathers its parameters in every forward, so every rank runs as many as the rank with
    the most rows, idle one-token forwards included."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(samples)
    rows = pack_rows(samples, max_tokens)
    passes = int(all_max(float(len(rows)))[0]) if guards.partitioned(model) else len(rows)
    for r in range(passes):
        if r >= len(rows):
            guards.idle_forward(model, device)
            continue
        for i, lp in zip(rows[r], row_logprobs(model, [samples[i] for i in rows[r]], temperature, device)[0]):
            out[i] = lp
    return out


def pad(seqs: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    clip_frac: float = 0.0
    entropy: float = 0.0
    # mean |log pi_rollout - log pi_trainer| over response tokens, before any update of this step:
    # ~1e-5 when vLLM samples from the policy being trained; it grows if weight sync ever breaks
    rollout_logprob_gap: float = 0.0
    tis_weight_mean: float = 1.0  # mean TIS weight over trained tokens (1 = rollout and trainer agree)
    tis_capped_frac: float = 0.0  # share of trained tokens whose weight was capped
    trained_frac: float = 1.0  # share of samples that got a forward/backward (the rest contribute no gradient)
    nonfinite_skipped: int = 0  # optimizer updates skipped for a NaN/inf loss or gradient (pipeline.train.guards)
    padded_passes: int = 0  # zero backwards this rank ran to match a rank with more rows (several processes)
    updates: int = 0


@dataclass
class RowResult:
    """One packed row's contribution to its minibatch's logged figures (already weighted)."""

    loss: float
    kl: float
    clip_frac: float
    entropy_sum: float
    entropy_tokens: int
    gap_sums: list[float]  # per sample: Σ |log pi_rollout - log pi_trainer| over its sampled tokens
    gap_tokens: int
    scored_tokens: float = 0.0  # the row's unmasked response tokens
    tis_sum: float = 0.0  # Σ TIS weight over the row's unmasked tokens
    tis_capped: int = 0  # tokens whose weight hit the cap
    finite: bool = True  # False: the row's loss was NaN/inf and it was not back-propagated


@dataclass
class Minibatch:
    samples: list[Sample]
    old_logprobs: Optional[list[torch.Tensor]]  # pre-update policy; None = this forward (one minibatch)
    ref_logprobs: Optional[list[torch.Tensor]]  # reference policy; None at beta = 0
    scored_tokens: float  # response tokens that carry loss (truncated ones masked out), skipped samples included
    total_seqs: int  # sequences in the minibatch, skipped ones included (the seq_mean / dr_grpo denominator)
    step: int = 0  # the RL step it belongs to (1-based, as logged)
    # processes: the two denominators above are sums over every rank's share of the minibatch, and each
    # rank's loss is scaled by `world` because DeepSpeed averages the ranks' gradients
    world: int = 1


def minibatch_orders(n_samples: int, num_minibatches: int, seed: int, step: int) -> list[list[int]]:
    order = list(range(n_samples))
    random.Random(seed * MINIBATCH_ORDER_SALT + step).shuffle(order)
    return [c for c in (order[i::num_minibatches] for i in range(num_minibatches)) if c]


def masked(x: Sample, stage: DictConfig) -> bool:
    """Is every response token of the sample masked out of the loss (truncated, with `mask_truncated`)?"""
    return bool(stage.mask_truncated and x.completion.truncated)


def contributes(x: Sample, stage: DictConfig) -> bool:
    """False when the sample's gradient is exactly zero: fully masked, or advantage 0 with no KL term."""
    return not masked(x, stage) and (stage.beta > 0 or x.advantage != 0.0)


def update(engine, ref_model, samples: list[Sample], cfg: DictConfig, device: torch.device, step: int) -> UpdateStats:
    """`num_minibatches` optimizer steps on one rollout batch; figures averaged over the updates."""
    stage = cfg.stage
    stats = UpdateStats()
    if not samples:
        return stats
    orders = minibatch_orders(len(samples), stage.num_minibatches, stage.seed, step)
    if faults.active("nan_loss", step + 1):  # a NaN advantage makes the update's loss NaN
        next((x for x in samples if contributes(x, stage)), samples[0]).advantage = float("nan")
    active = [contributes(x, stage) or not stage.skip_zero_grad for x in samples]
    trained = [x for x, a in zip(samples, active) if a]
    temperature, row_tokens = stage.rollout.temperature, stage.max_tokens_per_forward
    with torch.no_grad():
        # the policy before any update = the rollout policy (weights were synced), in trainer numerics
        old = (
            _spread(packed_logprobs(engine, trained, temperature, device, row_tokens), active)
            if len(orders) > 1
            else None
        )
        ref = (
            _spread(packed_logprobs(ref_model, trained, temperature, device, row_tokens), active) if ref_model else None
        )
    rows_all: list[RowResult] = []
    for order in orders:
        chosen = [samples[i] for i in order]
        local_tokens = sum(len(x.completion.token_ids) for x in chosen if not masked(x, stage))
        scored_tokens, total_seqs = all_sum(float(local_tokens), float(len(chosen)))  # over every rank
        minibatch = Minibatch(
            [samples[i] for i in order if active[i]],
            [old[i] for i in order if active[i]] if old is not None else None,
            [ref[i] for i in order if active[i]] if ref is not None else None,
            scored_tokens=scored_tokens,
            total_seqs=int(total_seqs),
            step=step + 1,
            world=world_size(),
        )
        rows, skipped, padded = minibatch_step(engine, minibatch, stage, device, f"step {step + 1}, GRPO update")
        stats.nonfinite_skipped += skipped
        stats.padded_passes += padded
        rows_all += rows
        stats.loss += sum(r.loss for r in rows)
        stats.kl += sum(r.kl for r in rows)
        stats.clip_frac += sum(r.clip_frac for r in rows)
        stats.entropy += sum(r.entropy_sum for r in rows) / max(1, sum(r.entropy_tokens for r in rows))
        stats.updates += 1
    return _finish_stats(stats, rows_all, len(trained) / len(samples))


def _spread(values: list[torch.Tensor], active: list[bool]) -> list[Optional[torch.Tensor]]:
    """Per-sample values computed for the active samples only, placed back at their batch positions."""
    it = iter(values)
    return [next(it) if a else None for a in active]


def _finish_stats(stats: UpdateStats, rows: list[RowResult], trained_frac: float) -> UpdateStats:
    n = max(1, stats.updates)
    stats.loss, stats.kl, stats.clip_frac, stats.entropy = (
        stats.loss / n,
        stats.kl / n,
        stats.clip_frac / n,
        stats.entropy / n,
    )
    gap_tokens = sum(r.gap_tokens for r in rows)
    stats.rollout_logprob_gap = sum(sum(r.gap_sums) for r in rows) / max(1, gap_tokens)
    tis_tokens = sum(r.scored_tokens for r in rows)
    if tis_tokens:
        stats.tis_weight_mean = sum(r.tis_sum for r in rows) / tis_tokens
        stats.tis_capped_frac = sum(r.tis_capped for r in rows) / tis_tokens
    stats.trained_frac = trained_frac
    return stats


def minibatch_step(
    engine, minibatch: Minibatch, stage: DictConfig, device: torch.device, where: str = "GRPO update"
) -> tuple[list[RowResult], bool, int]:
    """Forward/backward every packed row of the minibatch, then one (guarded) optimizer step; returns
    the rows' figures, whether the step was skipped for a non-finite loss or gradient, and how many
    zero backwards matched another rank's larger row count."""
    rows = pack_rows(minibatch.samples, stage.max_tokens_per_forward)
    # every rank runs the same number of backward passes (ZeRO-2 reduces gradients in each one): a rank
    # with fewer rows, or none, makes up the difference with zero backwards, which add nothing
    passes = max(1, int(all_max(float(len(rows)))[0]))
    results: list[RowResult] = []
    for r in range(passes):
        engine.set_gradient_accumulation_boundary(r == passes - 1)
        if r < len(rows) and all(x.finite for x in results):
            results.append(row_forward_backward(engine, minibatch, rows[r], stage, device))
            if results[-1].finite:
                continue
        guards.zero_backward(engine)  # no rows left, or a non-finite loss that was not back-propagated
    loss_finite = all(r.finite for r in results)
    if faults.active("nan_grad", minibatch.step):
        faults.poison_a_gradient(engine.module)
    skipped = guards.guarded_step(engine, loss_finite, stage.optim.on_nonfinite, where)
    return [r for r in results if r.finite], skipped, passes - max(1, len(rows))


def _rollout_gap(samples: list[Sample], trainer_logprobs: list[torch.Tensor]) -> tuple[list[float], int]:
    sums, tokens = [], 0
    for x, lp in zip(samples, trainer_logprobs):
        if x.completion.logprobs:
            rollout = torch.tensor(x.completion.logprobs, dtype=lp.dtype, device=lp.device)
            sums.append((rollout - lp).abs().sum().item())
            tokens += len(x.completion.logprobs)
    return sums, tokens


def row_forward_backward(
    engine, minibatch: Minibatch, row: list[int], stage: DictConfig, device: torch.device
) -> RowResult:
    """The clipped-surrogate loss of one packed row, back-propagated at its share of the minibatch loss."""
    samples = [minibatch.samples[j] for j in row]
    logp_list, entropies = row_logprobs(engine, samples, stage.rollout.temperature, device, with_entropy=True)
    old = [minibatch.old_logprobs[j] for j in row] if minibatch.old_logprobs is not None else None
    gap_sums, gap_tokens = _rollout_gap(samples, old if old is not None else [lp.detach() for lp in logp_list])
    logp = pad(logp_list)
    old_logp = pad(old) if old is not None else logp.detach()
    ref_logp = pad([minibatch.ref_logprobs[j] for j in row]) if minibatch.ref_logprobs is not None else None
    lengths = torch.tensor([len(x.completion.token_ids) for x in samples])
    truncated = torch.tensor([x.completion.truncated for x in samples])
    mask = maths.response_mask(lengths, truncated, logp.size(1), stage.mask_truncated).to(device)
    advantages = torch.tensor([x.advantage for x in samples], device=device)
    weights = _tis(samples, old_logp, mask, stage)
    out = maths.policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        stage.eps_low,
        stage.eps_high,
        beta=stage.beta,
        ref_logp=ref_logp,
        aggregation=stage.aggregation,
        max_len=stage.rollout.max_new_tokens,
        is_weights=weights,
    )
    row_tokens = float(mask.sum())
    loss_weight = maths.chunk_weight(
        stage.aggregation, len(samples), minibatch.total_seqs, row_tokens, minibatch.scored_tokens
    )
    if not guards.finite(out.loss):
        return RowResult(0.0, 0.0, 0.0, 0.0, 0, [], 0, finite=False)
    engine.backward(out.loss * loss_weight * minibatch.world)
    token_share = row_tokens / minibatch.scored_tokens if minibatch.scored_tokens > 0 else 0.0
    return RowResult(
        loss=out.loss.item() * loss_weight,
        kl=out.kl.item() * token_share,
        clip_frac=out.clip_frac.item() * token_share,
        entropy_sum=float(sum(e.sum() for e in entropies)),
        entropy_tokens=sum(e.numel() for e in entropies),
        gap_sums=gap_sums,
        gap_tokens=gap_tokens,
        scored_tokens=row_tokens,
        tis_sum=float(weights.sum()) if weights is not None else float(mask.sum()),
        tis_capped=int(((weights >= stage.tis.cap) & mask.bool()).sum()) if weights is not None else 0,
    )


def _tis(samples: list[Sample], old_logp: torch.Tensor, mask: torch.Tensor, stage: DictConfig):
    """TIS weights of the row's tokens (None when off, or when vLLM returned no log-probs)."""
    if stage.tis.mode == "none" or not all(x.completion.logprobs for x in samples if x.completion.token_ids):
        return None
    rollout = pad([torch.tensor(x.completion.logprobs, dtype=old_logp.dtype) for x in samples]).to(old_logp.device)
    rollout = torch.nn.functional.pad(rollout, (0, old_logp.size(1) - rollout.size(1)))
    return maths.tis_weights(old_logp.detach(), rollout, mask, stage.tis.mode, stage.tis.cap)
