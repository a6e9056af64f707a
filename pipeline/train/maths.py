"""Training maths shared by the SFT, reward-model and RL trainers: LR schedule, token-mean NLL, reward-model
losses. tests/unit/test_maths.py pins their numbers (the GRPO maths is `pipeline.rl.maths`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine down to `min_lr_ratio`.

    `step` counts optimizer steps already taken (LambdaLR convention), so the first update uses
    step 0 and never runs at lr 0.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of next-token NLL over positions whose target is not IGNORE (targets already shifted).

    Computed in fp32 whatever the logits dtype, so bf16 training does not lose the loss.
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def global_token_mean_scale(grad_accum: int, world_size: int, global_tokens: int) -> float:
    """Factor turning a micro-batch NLL *sum* into its share of the global token mean.

    DeepSpeed divides each micro-batch loss by `grad_accum` and averages gradients over ranks, so
    scaling the sum by grad_accum * world / global_tokens yields exactly
    d/dθ [Σ_all-tokens nll / global_tokens]: every target token weighs the same however the
    tokens fall into micro-batches and ranks (a per-micro-batch mean would over-weight short ones).
    """
    return grad_accum * world_size / max(1, global_tokens)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Pairwise reward-model loss: -log σ(r_chosen - r_rejected), averaged over pairs."""
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pointwise reward-model loss: binary cross-entropy of σ(r) against 1 = safe / 0 = unsafe."""
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())
