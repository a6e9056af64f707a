"""The red-team set (`pipeline.rl.attacks`): every case scores 0 accuracy, in bounded time, without raising."""

from __future__ import annotations

import math
import os
import time

import pytest

from pipeline.rl import attacks
from pipeline.rl.rewards import RewardContext, score
from pipeline.rl.verify import Verifier

HARD_TIMEOUT_S = 10.0
WEIGHTS = {"accuracy": 1.0, "format": 0.2, "language": 0.1}
CASES = list(attacks.cases())


@pytest.fixture(scope="module")
def ctx():
    c = RewardContext(verifier=Verifier(workers=2, hard_timeout_s=HARD_TIMEOUT_S), language="en")
    yield c
    c.verifier.close()


def test_the_right_answer_still_scores(ctx):
    total, parts = score([attacks.THINK + "So \\boxed{4}."], [attacks._math()], WEIGHTS, ctx)
    assert parts["accuracy"] == [1.0] and parts["format"] == [1.0] and total == [pytest.approx(1.3)]


@pytest.mark.parametrize("name, completion, record", CASES, ids=[c[0] for c in CASES])
def test_an_attack_scores_nothing_for_accuracy_in_bounded_time(ctx, name, completion, record):
    t0 = time.perf_counter()
    total, parts = score([completion], [record], WEIGHTS, ctx)
    seconds = time.perf_counter() - t0
    assert parts["accuracy"] == [0.0], name
    assert all(math.isfinite(x) for x in total) and 0.0 <= total[0] <= 0.3 + 1e-9
    assert seconds < HARD_TIMEOUT_S + 5, f"{name}: {seconds:.1f}s"


def test_a_whole_batch_of_attacks_scores_together(ctx):
    """One batch (as a rollout step sends it): order kept, nothing raises, every accuracy 0."""
    names, completions, records = zip(*CASES)
    _, parts = score(list(completions), list(records), WEIGHTS, ctx)
    assert parts["accuracy"] == [0.0] * len(CASES)


def _dies(job):
    os._exit(1)  # a worker killed mid-check (OOM killer, segfault in a parser)


def test_a_verifier_worker_that_dies_costs_one_timeout_not_the_run():
    v = Verifier(workers=1, hard_timeout_s=2.0, check_fn=_dies)
    try:
        t0 = time.time()
        assert v.check([("math", ("4", "4")), ("math", ("5", "5"))]) == [False, False]
        assert time.time() - t0 < 15 and v.timeouts == 2
    finally:
        v.close()


def test_the_lenient_reward_reads_every_attack_in_bounded_time(ctx):
    """R1-Zero's opt-in last-number reward parses no LaTeX, so it must stay fast on every case."""
    names, completions, records = zip(*CASES)
    t0 = time.perf_counter()
    total, parts = score(list(completions), list(records), {"lenient": 1.0}, ctx)
    assert time.perf_counter() - t0 < 2.0
    assert all(x in (0.0, 1.0, None) for x in parts["lenient"]) and all(math.isfinite(x) for x in total)
