"""GRPO maths shared by every RL stage (R1 §2.2, Eq. 1-3), with the published variants.

All functions are pure tensor maths on padded [batch, time] tensors plus a 0/1 `mask` of response
tokens, so each variant can be pinned with hand-computed numbers (tests/unit/test_grpo.py).

* Group-relative advantages: A_i = (r_i - mean(r_group)) / (max(std(r_group), floor) + eps); Dr. GRPO
  drops the std division (it up-weights easy/hard groups with tiny spread). The floor keeps a small
  continuous difference (format, language, an RM score) from becoming a full-size advantage.
* Clipped surrogate against the rollout (old) policy, with ε_low / ε_high (DAPO's clip-higher
  when they differ). R1 reports ε = 10 - effectively unclipped because it takes one policy update
  per rollout batch, where ratio = 1. Frameworks default to 0.2 (PPO), which matters as soon as
  one batch feeds several minibatch updates.
* KL to a frozen reference with the k3 estimator: π_ref/π - log(π_ref/π) - 1 (unbiased, ≥ 0).
* Truncated importance sampling (TIS) for the rollout/trainer mismatch: vLLM samples from its own
  numerics (bf16 kernels, another attention), so the trainer's "old" policy is not exactly the
  sampler. Each token's policy-gradient term is weighted by min(π_old/π_rollout, C) (token level),
  or each sequence by min(Π π_old/π_rollout, C) (sequence level); the cap bounds the variance.
* Loss aggregation: "seq_mean" (R1 Eq. 1: mean over each output's tokens, then over outputs),
  "token_mean" (DAPO: every token weighs the same), "dr_grpo" (sum over tokens divided by a
  constant, the max response length, so no length bias either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("seq_mean", "token_mean", "dr_grpo")


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6, std_floor: float = 0.0
) -> torch.Tensor:
    """rewards [N*G] (groups contiguous) -> advantages [N*G].

    `std_floor`: the std a group is divided by is at least this, so a group whose rewards differ only
    a little (one language score of 0.9 among 1.0s) gets advantages in proportion to that difference
    instead of being blown up to the size of a right-versus-wrong group's.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.view(-1, group_size).float()
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = r.std(dim=1, keepdim=True, unbiased=True).nan_to_num(0.0)
        adv = adv / (std.clamp(min=std_floor) + eps)
    # a flat group's advantages are exactly 0 (its float mean can miss the shared value by an ulp, which
    # left ~1e-7 advantages: no learning signal, yet a full forward/backward for every sample)
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)
    return adv.masked_fill(flat, 0.0).view(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool [N]: groups whose rewards are all equal (no learning signal; DAPO's dynamic sampling
    drops and refills them)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π || π_ref): exp(ref - logp) - (ref - logp) - 1."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def aggregate(values: torch.Tensor, mask: torch.Tensor, how: str, max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] over response tokens according to `how`."""
    mask = mask.to(values.dtype)
    if how == "seq_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.mean()
    if how == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if how == "dr_grpo":
        return (values * mask).sum() / (values.size(0) * (max_len or values.size(1)))
    raise ValueError(f"unknown loss aggregation {how!r}; choose from {AGGREGATIONS}")


def chunk_weight(how: str, chunk_seqs: int, total_seqs: int, chunk_tokens: float, total_tokens: float) -> float:
    """Factor making a chunk's `aggregate` its share of the whole batch's, so losses of chunks that
    are back-propagated one at a time sum to the batch loss (no batch-sized autograd graph).

    seq_mean and dr_grpo average over sequences (dr_grpo's token normaliser is a constant), so a
    chunk weighs chunk_seqs / total_seqs; token_mean weighs its share of the response tokens.
    """
    if how in ("seq_mean", "dr_grpo"):
        return chunk_seqs / max(1, total_seqs)
    if how == "token_mean":
        return chunk_tokens / total_tokens if total_tokens > 0 else 0.0
    raise ValueError(f"unknown loss aggregation {how!r}; choose from {AGGREGATIONS}")


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    pg_loss: torch.Tensor
    kl: torch.Tensor  # mean per-token k3 KL over response tokens
    clip_frac: torch.Tensor  # fraction of response tokens whose ratio was clipped


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    aggregation: str = "seq_mean",
    max_len: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """GRPO objective (to minimise) on token log-probs [B, T], advantages [B], mask [B, T].

    -w·min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) + β·KL_k3, aggregated over response tokens; `is_weights`
    w [B, T] are the (detached) TIS weights, 1 when absent.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1).to(logp.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    pg_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        pg_token = pg_token * is_weights.detach().to(logp.dtype)
    m = mask.to(logp.dtype)
    if beta > 0.0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    per_token, kl = pg_token, torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is not None:  # logged whenever a reference exists, penalised only with beta > 0
        kl_tok = k3_kl(logp, ref_logp)
        kl = (kl_tok * m).sum() / m.sum().clamp(min=1)
        if beta > 0.0:
            per_token = pg_token + beta * kl_tok
    loss = aggregate(per_token, mask, aggregation, max_len)
    with torch.no_grad():
        was_clipped = (clipped < unclipped) & mask.bool()  # the clipped term is the active one
        clip_frac = was_clipped.sum() / mask.sum().clamp(min=1)
        pg = aggregate(pg_token, mask, aggregation, max_len)
    return PolicyLoss(loss=loss, pg_loss=pg, kl=kl.detach(), clip_frac=clip_frac)


TIS_MODES = ("none", "token", "sequence")


def tis_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, mode: str, cap: float):
    """Truncated importance weights [B, T] of the trainer's old policy against the rollout policy.

    token: w_t = min(exp(old_t - rollout_t), cap); sequence: every token of a sequence gets
    min(exp(Σ_t (old_t - rollout_t)), cap), the sum taken over its unmasked tokens. Returns None for "none".
    """
    if mode == "none":
        return None
    if mode not in TIS_MODES:
        raise ValueError(f"unknown TIS mode {mode!r}; choose from {TIS_MODES}")
    m = mask.to(old_logp.dtype)
    log_ratio = (old_logp - rollout_logp) * m
    if mode == "token":
        return torch.exp(log_ratio).clamp(max=cap) * m
    seq = torch.exp(log_ratio.sum(-1).clamp(max=60.0)).clamp(max=cap)
    return seq.unsqueeze(-1) * m


def response_mask(lengths: torch.Tensor, truncated: torch.Tensor, max_len: int, mask_truncated: bool) -> torch.Tensor:
    """[B, max_len] 0/1 mask of response tokens; truncated outputs are fully masked if asked (DAPO's
    overlong filtering: a cut-off answer is not evidence that the reasoning was wrong)."""
    ar = torch.arange(max_len).unsqueeze(0)
    mask = (ar < lengths.unsqueeze(1)).float()
    if mask_truncated:
        mask = mask * (~truncated.bool()).float().unsqueeze(1)
    return mask


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the policy's next-token distribution [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) under logits / temperature (the sampling distribution vLLM used)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
