"""GRPO maths against hand-computed numbers."""

import math

import pytest
import torch

from pipeline.rl import maths as grpo
from pipeline.rl.maths import (
    aggregate,
    gather_logprobs,
    group_advantages,
    k3_kl,
    policy_loss,
    response_mask,
    token_entropy,
    zero_variance_groups,
)


def test_group_advantages_std_and_dr_grpo():
    r = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    a = group_advantages(r, 4)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    torch.testing.assert_close(a[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-6))
    torch.testing.assert_close(a[4:], torch.zeros(4))  # equal rewards: no signal, no NaN
    torch.testing.assert_close(group_advantages(r, 4, scale_by_std=False)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(6), 4)


def test_zero_variance_groups():
    r = torch.tensor([1.0, 1, 0, 1, 0, 0])
    assert zero_variance_groups(r, 2).tolist() == [True, False, True]


def test_k3_hand_value_and_zero_at_equality():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert k3_kl(logp, logp).item() == 0.0


LOGP_OLD = torch.zeros(2, 3)
LOGP = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 1.0, 1.0]]))
MASK = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
ADV = torch.tensor([1.0, -1.0])


@pytest.mark.parametrize("how, expected", [("seq_mean", 0.125), ("token_mean", -0.2), ("dr_grpo", -0.1)])
def test_clipped_surrogate_aggregations(how, expected):
    # token terms: -min(1.5, 1.2) = -1.2 (clipped); -min(0.5, 0.8) = -0.5; -min(-1.1, -1.1) = 1.1
    out = policy_loss(LOGP, LOGP_OLD, ADV, MASK, eps_low=0.2, eps_high=0.2, aggregation=how, max_len=3)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.clip_frac.item() == pytest.approx(1 / 3)


def test_clip_higher():
    out = policy_loss(LOGP, LOGP_OLD, ADV, MASK, eps_low=0.2, eps_high=0.6, aggregation="seq_mean")
    assert out.loss.item() == pytest.approx(((-1.5 - 0.5) / 2 + 1.1) / 2, abs=1e-6)
    assert out.clip_frac.item() == 0.0


def test_kl_penalty_adds_beta_times_k3():
    ref = torch.log(torch.tensor([[0.75, 0.25, 1.0], [1.1, 1.0, 1.0]]))
    beta = 0.5
    base = policy_loss(LOGP, LOGP_OLD, ADV, MASK, 0.2, 0.2, aggregation="token_mean")
    out = policy_loss(LOGP, LOGP_OLD, ADV, MASK, 0.2, 0.2, beta=beta, ref_logp=ref, aggregation="token_mean")
    k = [0.5 - math.log(0.5) - 1, 0.5 - math.log(0.5) - 1, 0.0]  # ref/π = 0.5, 0.5, 1
    assert out.kl.item() == pytest.approx(sum(k) / 3, abs=1e-6)
    assert out.loss.item() == pytest.approx(base.loss.item() + beta * sum(k) / 3, abs=1e-6)
    with pytest.raises(ValueError):
        policy_loss(LOGP, LOGP_OLD, ADV, MASK, 0.2, 0.2, beta=0.1)


def test_gradient_only_through_unclipped_tokens():
    logp = LOGP.clone().requires_grad_(True)
    policy_loss(logp, LOGP_OLD, ADV, MASK, 0.2, 0.2, aggregation="token_mean").loss.backward()
    g = logp.grad
    assert g[0, 0] == 0  # clipped: no gradient
    assert g[0, 1].item() == pytest.approx(-0.5 / 3)  # d(-ρA)/dlogp = -ρA / n_tokens
    assert g[1, 0].item() == pytest.approx(1.1 / 3)
    assert g[0, 2] == 0 and g[1, 1] == 0  # masked


def test_response_mask_and_truncation():
    m = response_mask(torch.tensor([2, 3]), torch.tensor([False, True]), 4, mask_truncated=False)
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    m = response_mask(torch.tensor([2, 3]), torch.tensor([False, True]), 4, mask_truncated=True)
    assert m.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]


def test_aggregate_rejects_unknown():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "mean")


def test_logprob_and_entropy_helpers():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert gather_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert gather_logprobs(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    )
    assert token_entropy(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))


def test_request_seeds_are_deterministic_and_their_sample_ranges_never_overlap():
    from pipeline.rl.rollout import request_seed

    assert request_seed(42, 3, 7) == request_seed(42, 3, 7)
    n = 16  # vLLM seeds sample i of a request with seed + i
    seeds = [request_seed(42, step, i) for step in range(20) for i in range(256)]
    ranges = sorted((s, s + n) for s in seeds)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:]))
    assert all(0 <= s < 2**31 - 1 - n for s in seeds)


@pytest.mark.parametrize("how", ["seq_mean", "token_mean", "dr_grpo"])
def test_chunked_losses_sum_to_the_batch_loss_and_gradient(how):
    """Back-propagating row by row with chunk_weight gives the batch loss and gradient exactly."""
    torch.manual_seed(0)
    B, T = 5, 6
    logits = torch.randn(B, T, requires_grad=True)
    old = torch.randn(B, T)
    ref = torch.randn(B, T)
    adv = torch.randn(B)
    lengths = torch.tensor([6, 3, 5, 1, 4])
    truncated = torch.tensor([False, True, False, False, False])
    mask = grpo.response_mask(lengths, truncated, T, True)
    full = grpo.policy_loss(logits, old, adv, mask, 0.2, 0.28, beta=0.1, ref_logp=ref, aggregation=how, max_len=T)
    (g_full,) = torch.autograd.grad(full.loss, logits)
    total_tokens = float(mask.sum())
    acc, g = 0.0, torch.zeros_like(logits)
    for rows in ([0, 1], [2], [3, 4]):
        out = grpo.policy_loss(
            logits[rows],
            old[rows],
            adv[rows],
            mask[rows],
            0.2,
            0.28,
            beta=0.1,
            ref_logp=ref[rows],
            aggregation=how,
            max_len=T,
        )
        w = grpo.chunk_weight(how, len(rows), B, float(mask[rows].sum()), total_tokens)
        (gr,) = torch.autograd.grad(out.loss * w, logits)
        acc += out.loss.item() * w
        g += gr
    assert acc == pytest.approx(full.loss.item(), rel=1e-6)
    assert torch.allclose(g, g_full, atol=1e-7)


def test_a_small_continuous_difference_is_not_blown_up_to_a_full_size_advantage():
    """The case issue 14 found: accuracy flat, one language score of 0.9 (totals 0.29 vs 0.30)."""
    flat_but_noisy = torch.tensor([0.29] + [0.30] * 7)
    one_right = torch.tensor([1.3] + [0.3] * 7)
    unfloored = group_advantages(flat_but_noisy, 8)
    assert unfloored[0] == pytest.approx(-2.47, abs=0.01) and unfloored[1] == pytest.approx(0.35, abs=0.01)
    floored = group_advantages(flat_but_noisy, 8, std_floor=0.1)
    assert floored.abs().max() < 0.1  # in proportion to a 0.01 difference
    torch.testing.assert_close(group_advantages(one_right, 8, std_floor=0.1), group_advantages(one_right, 8))
    from pipeline.run.config import compose

    assert compose(["stage=stage2"]).stage.adv_std_floor == 0.1
    assert compose(["stage=stage4"]).stage.adv_std_floor == 0.1


def test_rm_scores_get_their_own_floor_a_near_tie_stays_small_a_preference_keeps_its_size():
    """Stage-4's RM σ-scores of one group differ by a few hundredths: the reasoning floor (0.1) cut a
    real preference to a third; `rm_std_floor` (0.02) leaves it whole but still damps a near-tie."""
    from pipeline.run.config import compose

    floor = compose(["stage=stage4"]).stage.rm_std_floor
    assert floor == 0.02
    near_tie = torch.tensor([0.501, 0.500, 0.502, 0.500])
    assert group_advantages(near_tie, 4).abs().max() > 1.0  # unfloored: noise at full size
    assert group_advantages(near_tie, 4, std_floor=floor).abs().max() < 0.1
    preference = torch.tensor([0.55, 0.50, 0.60, 0.50])  # std 0.048
    torch.testing.assert_close(group_advantages(preference, 4, std_floor=floor), group_advantages(preference, 4))
    assert group_advantages(preference, 4, std_floor=0.1).abs().max() < 0.8  # what the shared floor did


def test_tis_weights_token_and_sequence_level_by_hand():
    from pipeline.rl.maths import tis_weights

    old = torch.tensor([[-1.0, -2.0, -0.5]])
    rollout = torch.tensor([[-1.5, -1.0, -9.0]])  # ratios e^0.5, e^-1, (masked)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    token = tis_weights(old, rollout, mask, "token", cap=1.5)
    assert token.tolist()[0] == pytest.approx([1.5, math.exp(-1.0), 0.0])  # e^0.5 = 1.65 capped at 1.5
    seq = tis_weights(old, rollout, mask, "sequence", cap=1.5)
    assert seq.tolist()[0] == pytest.approx([math.exp(-0.5)] * 2 + [0.0])  # e^(0.5 - 1), masked token ignored
    assert tis_weights(old, rollout, mask, "none", cap=1.5) is None
    with pytest.raises(ValueError, match="unknown TIS mode"):
        tis_weights(old, rollout, mask, "tokens", cap=1.5)


def test_is_weights_scale_the_policy_gradient_term_only():
    w = torch.full_like(LOGP, 0.5)
    base = policy_loss(LOGP, LOGP_OLD, ADV, MASK, 0.2, 0.2, aggregation="token_mean")
    half = policy_loss(LOGP, LOGP_OLD, ADV, MASK, 0.2, 0.2, aggregation="token_mean", is_weights=w)
    assert half.loss.item() == pytest.approx(0.5 * base.loss.item())


def test_a_flat_group_gets_exactly_zero_advantages():
    """A total of 1.2844... eight times (accuracy + format + a language share): the float32 mean misses
    it by an ulp, which used to leave ~1e-6 advantages, so the zero-gradient skip never fired on them."""
    x = 1.2844421851525047
    flat = torch.tensor([x] * 8).view(1, 8)
    assert (flat - flat.mean(dim=1, keepdim=True)).abs().max() > 0  # the float trap this guards against
    rewards = torch.tensor([x] * 8 + [1.0, 0.0] * 4)
    adv = group_advantages(rewards, 8, std_floor=0.1)
    assert (adv[:8] == 0.0).all()
    assert adv[8:].abs().min() > 0.5
