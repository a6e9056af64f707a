import math

import pytest
import torch

from pipeline.train.maths import IGNORE, global_token_mean_scale, token_nll_sum, warmup_cosine


def test_warmup_cosine_hand_values():
    # warmup 4, total 14, floor 0.1
    assert warmup_cosine(0, 4, 14, 0.1) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 14, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 14, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(9, 4, 14, 0.1) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert warmup_cosine(14, 4, 14, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(99, 4, 14, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_token_nll_sum_matches_hand_computation():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]]])
    targets = torch.tensor([[0, 1, IGNORE]])
    expected = math.log(2) + (math.log(math.exp(2) + 1) - 0.0)
    assert token_nll_sum(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_scaled_micro_sums_give_the_global_token_mean_gradient():
    """Two micro-batches with 3 and 1 target tokens: DeepSpeed's 1/GAS then sum must equal the
    gradient of the mean over all 4 tokens (not the mean of the two micro means)."""
    torch.manual_seed(0)
    w = torch.randn(5, 7, requires_grad=True)
    xs = [torch.randn(3, 5), torch.randn(1, 5)]
    ys = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    ref = sum(token_nll_sum(x @ w, y) for x, y in zip(xs, ys)) / 4
    (g_ref,) = torch.autograd.grad(ref, w)
    gas, scale = 2, global_token_mean_scale(2, 1, 4)
    g = sum(torch.autograd.grad(token_nll_sum(x @ w, y) * scale / gas, w)[0] for x, y in zip(xs, ys))
    torch.testing.assert_close(g, g_ref)


def test_bradley_terry_and_pointwise_hand_values():
    from pipeline.train.maths import bradley_terry_loss, pointwise_loss

    # -log σ(2 - 0) = log(1 + e^-2); -log σ(0) = log 2
    got = bradley_terry_loss(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert got.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log(2)) / 2, rel=1e-6)
    # label 1 with score 0 -> log 2; label 0 with score 3 -> log(1 + e^3)
    got = pointwise_loss(torch.tensor([0.0, 3.0]), torch.tensor([1, 0]))
    assert got.item() == pytest.approx((math.log(2) + math.log1p(math.exp(3))) / 2, rel=1e-6)


def test_mcnemar_exact_p_by_hand():
    from pipeline.eval.maths import mcnemar

    before = [False] * 10 + [True] * 2 + [True] * 20
    after = [True] * 10 + [False] * 2 + [True] * 20
    out = mcnemar(before, after)
    assert (out["gained"], out["lost"], out["n"]) == (10, 2, 32)
    # two-sided binomial(12, 0.5): 2 * P(X <= 2) = 2 * (1 + 12 + 66) / 4096
    assert out["p"] == pytest.approx(2 * 79 / 4096)
    assert out["after"] - out["before"] == pytest.approx(8 / 32)
    assert mcnemar([True, False], [True, False])["p"] == 1.0  # no discordant pair: no evidence
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar([True], [True, False])


def test_sign_test_counts_rises_and_falls_and_drops_ties():
    from pipeline.eval.maths import sign_test

    before = [0.5] * 9 + [0.2, 0.7, 0.4]
    after = [0.6] * 9 + [0.1, 0.7, 0.4]  # 9 rose, 1 fell, 2 ties
    out = sign_test(before, after)
    assert (out["rose"], out["fell"], out["n"]) == (9, 1, 12)
    assert out["p"] == pytest.approx(2 * 11 / 1024)  # 2 * P(X <= 1), X ~ Bin(10, 0.5)
    assert out["after"] - out["before"] == pytest.approx((0.9 - 0.1) / 12)
    assert sign_test([0.3], [0.3])["p"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        sign_test([0.1], [0.1, 0.2])


def test_paired_permutation_test_weighs_the_size_of_each_change():
    from pipeline.eval.maths import paired_permutation_test, sign_test

    assert paired_permutation_test([0, 0, 0], [1, 1, 1]) == pytest.approx(2 / 8)  # only all-same flips tie
    # three prompts jump, three drift down a hair: the sign test sees 3 / 3, the permutation test the
    # jumps (every flip that keeps the three jumps on one side reaches the observed sum: 16 of 64)
    before, after = [0.1] * 6, [0.6, 0.5, 0.7, 0.09, 0.09, 0.08]
    assert sign_test(before, after)["p"] == pytest.approx(1.0)
    assert paired_permutation_test(before, after) == pytest.approx(16 / 64)
    # above 16 pairs: seeded Monte Carlo, reproducible, never 0
    b, a = [0.0] * 20, [0.1] * 20
    p = paired_permutation_test(b, a, resamples=2000)
    assert p == paired_permutation_test(b, a, resamples=2000) and p == pytest.approx(1 / 2001)
    assert paired_permutation_test([0.2, 0.3], [0.2, 0.3]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        paired_permutation_test([1.0], [])
