"""Rewards on good, malformed and adversarial completions."""

import time
from pathlib import Path

import pytest

from pipeline.rl.rewards import (
    REWARDS,
    RewardContext,
    accuracy_reward,
    extract_answer,
    format_reward,
    language_reward,
    language_share,
    lenient_reward,
    score,
)
from pipeline.rl.verify import Verifier


@pytest.fixture(scope="module")
def ctx():
    c = RewardContext(verifier=Verifier(workers=2, hard_timeout_s=10), language="en")
    yield c
    c.verifier.close()


GOOD = "<think>\n2 + 2 = 4.\n</think>\n\nSo the answer is \\boxed{4}."


def math_rec(answer):
    return {"task": "math", "answer": answer}


def test_registry_names():
    assert set(REWARDS) == {
        "accuracy",
        "code",
        "format",
        "language",
        "lenient",
        "helpfulness",
        "harmlessness",
    }


def test_accuracy_math_verify_equivalences(ctx):
    comps = [
        GOOD,
        "<think>x</think> \\boxed{\\frac{1}{2}}",
        "<think>x</think> \\boxed{0.5}",
        "<think>x</think> \\boxed{5}",
        "<think>x</think> no box 4",
        "<think>x</think> \\boxed{4}",
    ]
    recs = [
        math_rec("4"),
        math_rec("0.5"),
        math_rec("\\frac{1}{2}"),
        math_rec("4"),
        math_rec("4"),
        math_rec("\\unparsable{{{"),
    ]
    assert accuracy_reward(comps, recs, ctx) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_accuracy_uses_last_box_of_the_answer_part_only(ctx):
    # a box inside the reasoning does not count; only the final box after </think> does
    assert accuracy_reward(["<think>\\boxed{4}</think> \\boxed{5}"], [math_rec("4")], ctx) == [0.0]
    assert accuracy_reward(["<think>a</think> \\boxed{5} or \\boxed{4}"], [math_rec("4")], ctx) == [0.0]  # hedge
    assert accuracy_reward(["<think>a</think> \\boxed{4}, so \\boxed{4}"], [math_rec("4")], ctx) == [1.0]
    assert extract_answer("<think>a</think><think>b</think> \\boxed{3}") == "3"


def test_accuracy_reasoning_gym_scorer_is_binarised(ctx):
    import reasoning_gym

    ds = reasoning_gym.create_dataset("chain_sum", seed=5, size=1)
    entry = ds[0]
    rec = {"task": "chain_sum", "answer": entry["answer"], "entry": entry}
    right = f"<think>x</think> \\boxed{{{entry['answer']}}}"
    wrong = f"<think>x</think> \\boxed{{{int(entry['answer']) + 1}}}"
    assert accuracy_reward([right, wrong], [rec, rec], ctx) == [1.0, 0.0]


def test_adversarial_answers_are_cheap_and_wrong(ctx):
    huge = "<think>x</think> \\boxed{" + "9" * 200_000 + "}"
    nested = "<think>x</think> \\boxed{" + "{" * 5000 + "}" * 5000 + "}"
    power = "<think>x</think> \\boxed{9^{9^{9^{9^{9}}}}}"
    t0 = time.time()
    out = accuracy_reward([huge, nested, power, ""], [math_rec("4")] * 4, ctx)
    assert out == [0.0, 0.0, 0.0, 0.0]
    assert time.time() - t0 < 30


def _stuck(job):
    time.sleep(60)  # a worker stuck far beyond any alarm


def test_verifier_hard_kills_a_stuck_worker():
    v = Verifier(workers=1, hard_timeout_s=1.0, check_fn=_stuck)
    try:
        t0 = time.time()
        assert v.check([("math", ("4", "4")), ("math", ("5", "5"))]) == [False, False]
        assert time.time() - t0 < 10 and v.timeouts == 2
    finally:
        v.close()
    v = Verifier(workers=1)
    try:
        assert v.check([("math", ("4", "4"))]) == [True]
    finally:
        v.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, 1.0),
        ("<think>\n\n</think> \\boxed{4}", 0.0),  # empty reasoning
        ("<think>a</think><think>b</think> \\boxed{4}", 0.0),  # duplicated block
        ("<think>a</think> \\boxed{4} <think>c</think>", 0.0),  # trailing block
        ("<think>a</think> \\boxed{4} \\boxed{5}", 0.0),  # two answers
        ("<think>a</think> the answer is 4", 0.0),  # no box
        ("<think>a</think> \\boxed{}", 0.0),  # empty box
        ("\\boxed{4}", 0.0),  # no reasoning at all
        ("Sure! <think>a</think> \\boxed{4}", 0.0),  # preamble before think
        ("<think>a \\boxed{4}", 0.0),  # unclosed
    ],
)
def test_format_reward(text, expected, ctx):
    assert format_reward([text], [{}], ctx) == [expected]


def test_language_share_by_script():
    assert language_share("First add 3 and 4, then x = 7.", "en") == 1.0
    assert language_share("首先计算 3 + 4 = 7", "en") == 0.0
    assert language_share("首先计算 3 + 4 = 7", "zh") == 1.0
    assert language_share("We compute 总和 here", "en") == pytest.approx(3 / 5)
    assert language_share("Зная x, we get", "en") == pytest.approx(2 / 3)
    assert language_share("1 + 2 = 3", "en") is None  # no words: nothing to judge
    assert language_share("$\\alpha + \\beta$ with π and x", "en") == 1.0  # maths is not language
    with pytest.raises(ValueError, match="not supported"):
        language_share("x", "klingon")


def test_language_reward(ctx):
    comps = [
        GOOD,
        "<think>Let me 计算 this</think> \\boxed{1}",
        "no think \\boxed{1}",
        "<think>1 + 1 = 2</think> \\boxed{2}",
    ]
    out = language_reward(comps, [{}] * 4, ctx)
    assert out[0] == 1.0 and out[1] == pytest.approx(3 / 5) and out[2] == 0.0 and out[3] == 1.0


def test_lenient_reward_reads_the_last_number_and_skips_what_it_cannot_judge(ctx):
    """R1-Zero's warm-up reward: the base model's own "The answer is 10." earns it, a boxed right
    answer earns it too (so boxing stays strictly better under accuracy + lenient), an earlier right
    number followed by a wrong one does not, and code prompts or non-numeric gold get None."""
    comps = ["The answer is 1,000.", GOOD, "4 or maybe 5", "no number", "The answer is 10."]
    recs = [math_rec("1000"), math_rec("4"), math_rec("4"), math_rec("4"), {"task": "code", "tests": ["assert 1"]}]
    assert lenient_reward(comps, recs, ctx) == [1.0, 1.0, 0.0, 0.0, None]
    assert lenient_reward(["x = 3"], [math_rec("\\frac{1}{2}")], ctx) == [None]
    total, _ = score(["The answer is 4.", GOOD], [math_rec("4")] * 2, {"accuracy": 1.0, "lenient": 0.5}, ctx)
    assert total == [0.5, 1.5]


def test_score_weights_and_components(ctx):
    total, parts = score([GOOD, "\\boxed{4}"], [math_rec("4")] * 2, {"accuracy": 1.0, "format": 0.5}, ctx)
    assert parts == {"accuracy": [1.0, 1.0], "format": [1.0, 0.0]}
    assert total == [1.5, 1.0]
    with pytest.raises(ValueError, match="unknown reward"):
        score([GOOD], [math_rec("4")], {"acurracy": 1.0}, ctx)


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:")), 0.0)


def test_verifier_workers_do_not_copy_a_large_caller():
    """The workers come from a fork server, so they do not snapshot the caller's memory (a forked
    worker of a 10 GB trainer held up to 10 GB itself, and OOM-killed a stage-2 run)."""
    import os

    import torch

    ballast = torch.ones(512 * 1024 * 1024 // 4)  # 512 MB the caller has touched
    v = Verifier(workers=1)
    try:
        assert v.check([("math", ("1/2", "0.5"))]) == [True]
        workers = [p.pid for p in v._pool._pool]
        assert workers and all(pid != os.getpid() for pid in workers)
        assert all(_rss_mb(pid) < 400 for pid in workers), [_rss_mb(pid) for pid in workers]
        assert _rss_mb(os.getpid()) > 512
    finally:
        v.close()
        del ballast
