"""Evaluation maths (pass@k, majority vote), answer keys, per-benchmark loaders and the eval config."""

import math
from pathlib import Path

import pytest

from pipeline.data.sources import write_jsonl
from pipeline.eval.maths import majority_vote, pass_at_k
from pipeline.eval.protocol import evaluate_prompts, last_number_correct, vote_key
from pipeline.rl.rewards import RewardContext
from pipeline.rl.rollout import Completion, Sampling
from pipeline.rl.verify import Verifier
from pipeline.run.config import ConfigError, compose
from stages.evaluate import load_benchmark, markdown_table, paired_comparisons, paired_table

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not beside the checkout")


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(4, 2, 3) == 1.0  # fewer than k wrong samples: some k-subset always has a right one
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote_counts_ties_and_missing_answers():
    assert majority_vote(["3", "5", "5", None]) == 1
    assert majority_vote(["3", "5", "3", "5"]) == 0  # tie: the answer seen first
    assert majority_vote([None, None]) == -1
    assert majority_vote([None, "7"]) == 1


def test_vote_key_canonicalises_answers():
    t = "<think>x</think>\n\nThe answer is \\boxed{%s}."
    assert vote_key(t % "12") == vote_key(t % " 12.0 ") == vote_key(t % "$12$") == "12"
    assert vote_key(t % "1,018") == "1018"
    assert vote_key(t % "\\frac{1}{2}") == "\\frac{1}{2}"
    assert vote_key("<think>x</think> no box") is None


class ScriptedEngine:
    """Returns fixed texts: what vLLM would have sampled, so the maths can be checked by hand."""

    def __init__(self, greedy: list[str], sampled: list[list[str]]):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, prompts, sampling, **_):
        texts = [[g] for g in self.greedy] if sampling.temperature == 0.0 else self.sampled
        assert len(texts) == len(prompts) and all(len(t) == sampling.n for t in texts)
        return [[Completion([1, 2, 3], [0.0] * 3, t, False) for t in group] for group in texts]


def test_evaluate_prompts_greedy_pass1_and_cons():
    ans = lambda v: f"<think>\nadd\n</think>\n\nThe answer is \\boxed{{{v}}}."  # noqa: E731
    records = [
        {"id": "a", "question": "1+1", "answer": "2", "task": "math", "entry": None},
        {"id": "b", "question": "2+2", "answer": "4", "task": "math", "entry": None},
    ]
    engine = ScriptedEngine(
        greedy=[ans(2), ans(5)],
        sampled=[
            [ans(2), ans(3), ans(3), ans(2)],  # 2 right; tie 2 vs 3 -> 2 (first): right
            [ans(4), ans(5), ans(5), "no answer"],
        ],
    )  # 1 right; vote 5: wrong
    ctx = RewardContext(verifier=Verifier(workers=1))
    m, rows = evaluate_prompts(
        engine, [[1], [2]], records, ctx, sampling=Sampling(4, 0.6, 0.95, 8), seed=0, stop_ids=[0]
    )
    assert m["greedy_accuracy"] == 0.5
    assert m["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["pass@4"] == 1.0
    assert m["cons@4"] == 0.5
    assert m["sample_format"] == pytest.approx(7 / 8)
    assert rows[0]["voted"] == "2" and rows[1]["voted"] == "5" and rows[1]["samples_correct"] == 1


def test_markdown_table_puts_models_side_by_side():
    results = {
        "base": {
            "heldout": {"greedy_accuracy": 0.1, "pass@1": 0.05, "cons@4": 0.1, "pass@4": 0.2, "sample_len_mean": 90.0}
        },
        "stage1": {
            "heldout": {"greedy_accuracy": 0.5, "pass@1": 0.4, "cons@4": 0.5, "pass@4": 0.8, "sample_len_mean": 120.0}
        },
    }
    results["base"]["heldout"].update(greedy_lenient=0.25, greedy_format=0.0)
    table = markdown_table(results, ["heldout"], 4)
    assert "| model | greedy_accuracy | greedy_lenient | greedy_format | pass@1 | cons@4 | pass@4 |" in table
    assert "| base | 10.0% | 25.0% | 0.0% | 5.0% | 10.0% | 20.0% | 90 |" in table
    assert "| stage1 | 50.0% | - | - | 40.0% | 50.0% | 80.0% | 120 |" in table


def test_paired_comparison_joins_on_prompt_id_and_tests_against_the_first_model(tmp_path):
    # stage1 right on 0-9; stage2 right on 3-19 (so gains 10-19, loses 0-2); rows in a different order
    ids = [f"p{i}" for i in range(40)]
    for label, right in {"stage1": range(0, 10), "stage2": range(3, 20)}.items():
        rows = [{"id": i, "greedy_correct": int(i[1:]) in right} for i in ids]
        write_jsonl(rows[::-1] if label == "stage2" else rows, tmp_path / "results" / label / "gsm8k.rows.jsonl")
    paired = paired_comparisons(tmp_path, ["stage1", "stage2", "missing"], ["gsm8k", "heldout"])
    t = paired["gsm8k"]["stage2"]
    assert (t["n"], t["gained"], t["lost"], t["against"]) == (40, 10, 3, "stage1")
    assert (t["before"], t["after"]) == (0.25, 17 / 40)
    assert t["p"] == pytest.approx(2 * sum(math.comb(13, i) for i in range(4)) / 2**13)
    assert set(paired) == {"gsm8k"} and set(paired["gsm8k"]) == {"stage2"}  # nothing made up for the rest
    assert "| stage2 | stage1 | 40 | 25.0% | 42.5% | 10 | 3 |" in paired_table(paired)
    assert paired_comparisons(tmp_path, ["stage1"], ["gsm8k"]) == {}


def test_markdown_table_without_samples_has_greedy_columns_only():
    results = {"base": {"heldout": {"greedy_accuracy": 0.0, "greedy_lenient": 0.04, "greedy_format": 0.0}}}
    table = markdown_table(results, ["heldout"], 0)
    assert "| model | greedy_accuracy | greedy_lenient | greedy_format |" in table
    assert "| base | 0.0% | 4.0% | 0.0% |" in table and "@0" not in table


@pytest.mark.parametrize(
    "text,gold,expected",
    [
        ("So the answer is 23.", "23", True),
        ("5 + 7 = 12, then 12 - 3 = 9. The result is 9.", "9", True),
        ("The difference is 23 - 92 = 23.", "69", False),
        ("-27 + 41 = -14", "14", False),  # sign matters
        ("Total: 1,024 apples", "1024", True),  # thousands separator
        ("it is 2.50", "2.5", True),
        ("no digits here", "7", False),
        ("\\boxed{7}", "seven", None),  # a non-numeric gold is not judged
    ],
)
def test_last_number_correct(text, gold, expected):
    assert last_number_correct(text, gold) is expected


def test_greedy_lenient_counts_right_numbers_without_format():
    records = [
        {"id": "a", "question": "1+1", "answer": "2", "task": "math", "entry": None},
        {"id": "b", "question": "2+2", "answer": "4", "task": "math", "entry": None},
    ]
    boxed5 = "<think>\n2 + 2\n</think>\n\nThe answer is \\boxed{5}."  # format right, answer wrong
    engine = ScriptedEngine(greedy=["1 + 1 makes 2.", boxed5], sampled=[])
    ctx = RewardContext(verifier=Verifier(workers=1))
    m, _ = evaluate_prompts(engine, [[1], [2]], records, ctx, sampling=Sampling(0, 0.6, 0.95, 8), seed=0, stop_ids=[0])
    assert m["greedy_accuracy"] == 0.0 and m["greedy_lenient"] == 0.5 and "pass@1" not in m


def test_eval_config_rejects_unknown_benchmark():
    with pytest.raises(ConfigError, match="stage.benchmarks"):
        compose(["stage=eval", "stage.benchmarks=[heldout,nope]"])
    with pytest.raises(ConfigError, match="stage.samplez"):
        compose(["stage=eval", "+stage.samplez=3"])


def test_heldout_benchmark_is_far_from_training_items():
    cfg = compose(["stage=eval"])
    recs = load_benchmark("heldout", cfg.stage.catalog.heldout)
    assert len(recs) == 128 and {r["task"] for r in recs} == {"chain_sum", "basic_arithmetic"}
    train = compose(["stage=stage2"]).data
    assert cfg.stage.catalog.heldout.seed - train.seed > 1_000_000


@needs_shared
@pytest.mark.parametrize("name,first_answer", [("gsm8k", "18"), ("math500", None), ("aime24", None)])
def test_each_benchmark_file_loads(name, first_answer):
    cfg = compose(["stage=eval"])
    recs = load_benchmark(name, cfg.stage.catalog[name])
    assert recs and all(r["question"] and r["answer"] for r in recs)
    if first_answer:
        assert recs[0]["answer"] == first_answer
    if name == "aime24":
        assert len(recs) == 30


def test_the_rl_summary_tests_verdicts_and_the_last_number_readout_by_mcnemar(tmp_path):
    """R1-Zero from a base model that never boxes has no verdict to gain; its held-out summary still
    compares the first and last evals on the last-number read-out (code rows, lenient None, are left out)."""
    from pipeline.rl.loop import heldout_test

    def rows(correct, lenient):
        return [{"id": str(i), "greedy_correct": c, "lenient": x} for i, (c, x) in enumerate(zip(correct, lenient))]

    first = rows([False] * 6, [False, False, False, True, True, None])
    last = rows([False] * 6, [True, True, True, True, False, None])
    write_jsonl(first, tmp_path / "step_00000.jsonl")
    write_jsonl(last, tmp_path / "step_00024.jsonl")
    s = heldout_test(tmp_path)
    assert (s["heldout_gained"], s["heldout_lost"], s["heldout_steps"]) == (0, 0, [0, 24])
    assert (s["heldout_lenient_n"], s["heldout_lenient_gained"], s["heldout_lenient_lost"]) == (5, 3, 1)
    assert s["heldout_lenient_before"] == pytest.approx(0.4) and s["heldout_lenient_after"] == pytest.approx(0.8)
    assert s["heldout_lenient_p"] == pytest.approx(0.625)  # 2 * P(X <= 1), X ~ Bin(4, 1/2)
