import ast

import pytest

from pipeline.data.coldstart import arithmetic_cot, examples
from pipeline.data.r1format import extract_boxed, is_r1_format


@pytest.mark.parametrize(
    "expr",
    [
        "4 - 1 - 7",
        "2 - -1",
        "8 - 4 * 3 * -4 + 6",
        "( 56 + -33 ) - 84",
        "-( ( -6915 / 5 ) - 7652 + 4844 ) - 7314",
        "( ( -9 - 6 ) - -( -3 * 4 ) ) * 2 / 2",
        "-( -( 1 + 2 ) + -9 + -9 + -5 )",
        "7",
    ],
)
def test_arithmetic_cot_reaches_the_true_value(expr):
    reasoning, answer = arithmetic_cot(expr)
    assert int(answer) == eval(compile(ast.parse(expr, mode="eval"), "<e>", "eval"))
    assert reasoning.endswith(f"So the value is {answer}.")


def test_arithmetic_cot_shows_each_step_in_precedence_order():
    reasoning, answer = arithmetic_cot("8 - 4 * 3 * -4 + 6")
    lines = reasoning.splitlines()
    assert lines[2].startswith("4 × 3 = 12.")
    assert lines[3].startswith("12 × -4 = -48.")
    assert lines[4].startswith("8 - -48 = 56.")
    assert lines[5].startswith("56 + 6 = 62.")
    assert "verify" in reasoning and answer == "62"


def test_non_integer_division_is_skipped():
    with pytest.raises(ValueError):
        arithmetic_cot("1 / 3 + 1")


@pytest.mark.parametrize("task", ["chain_sum", "basic_arithmetic", "gsm_symbolic"])
def test_examples_are_r1_format_and_verified(task):
    import reasoning_gym

    rows = list(examples(task, seed=123, system_prompt="SYS", limit=12))
    assert len(rows) == 12
    ds = reasoning_gym.create_dataset(task, seed=123, size=24)
    golds = {ds[i]["question"]: ds[i] for i in range(24)}
    for r in rows:
        system, user, assistant = r["messages"]
        assert system == {"role": "system", "content": "SYS"}
        assert is_r1_format(assistant["content"])
        item = golds[user["content"]]
        assert ds.score_answer(extract_boxed(assistant["content"]), item) == 1.0


def test_examples_are_deterministic():
    a = list(examples("basic_arithmetic", 7, "S", 5))
    b = list(examples("basic_arithmetic", 7, "S", 5))
    assert a == b


def test_unknown_task_names_the_key():
    with pytest.raises(ValueError, match="data.tasks"):
        list(examples("no_such_task", 1, "S", 1))
