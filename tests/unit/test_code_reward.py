"""The `code` reward, code prompts (generated, HumanEval, MBPP, input/output JSONL), and code samples
through stage-3's verification and filters and through evaluation."""

from __future__ import annotations

import json

import pytest

from pipeline.data.code_tasks import (
    TEMPLATES,
    code_function_task,
    humaneval_records,
    is_code,
    iter_code_file,
)
from pipeline.data.prompts import chat, iter_reasoning_gym
from pipeline.data.rejection import select
from pipeline.data.sources import DataError
from pipeline.rl.batch import Batch, Sample
from pipeline.rl.metrics import batch_metrics
from pipeline.rl.rewards import RewardContext, correctness, extract_program, score
from pipeline.rl.rollout import Completion
from pipeline.rl.sandbox import Sandbox
from pipeline.rl.update import UpdateStats
from pipeline.rl.verify import Verifier
from pipeline.run.config import compose


def answer(code: str, think: str = "reasoning") -> str:
    return f"<think>\n{think}\n</think>\n\nHere it is.\n\n```python\n{code}\n```"


@pytest.fixture(scope="module")
def ctx():
    context = RewardContext(verifier=Verifier(workers=1), sandbox=Sandbox(workers=2))
    yield context
    context.verifier.close()


ADD = {
    "id": "t",
    "question": "q",
    "answer": None,
    "task": "code_functions",
    "entry": None,
    "tests": ["assert f(1) == 2", "assert f(2) == 3"],
    "setup": "",
}
MATH = {"id": "m", "question": "1+1", "answer": "2", "task": "math", "entry": None}


def test_extract_program_takes_the_last_block_after_think():
    text = (
        "<think>\n```python\ndef f(x): return 0\n```\n</think>\n\n```py\nx = 1\n```\nthen\n"
        "```python\ndef f(x):\n    return x\n```"
    )
    assert extract_program(text) == "def f(x):\n    return x\n"
    assert extract_program("<think>\n```python\nx=1\n```\n</think>\nno code") is None
    assert extract_program("<think>a</think>\n```\nplain = 1\n```") == "plain = 1\n"


def test_code_reward_scores_code_prompts_and_skips_maths(ctx):
    texts = [
        answer("def f(x):\n    return x + 1"),
        answer("def f(x):\n    return x"),
        "no code",
        answer("x"),
        "<think>\n1+1=2\n</think>\n\nThe answer is \\boxed{2}.",
    ]
    records = [ADD, ADD, ADD, MATH, MATH]
    total, parts = score(texts, records, {"accuracy": 1.0, "code": 1.0, "format": 0.2}, ctx)
    assert parts["code"] == [1.0, 0.0, 0.0, None, None]
    assert parts["accuracy"] == [None, None, None, 0.0, 1.0]
    assert parts["format"] == [
        1.0,
        1.0,
        0.0,
        0.0,
        1.0,
    ]  # a code prompt's answer needs a code block, a maths one \boxed{}
    assert total == pytest.approx([1.2, 0.2, 0.0, 0.0, 1.2])
    assert correctness(parts) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_partial_credit_is_the_share_of_tests_passed(ctx):
    partial = RewardContext(verifier=ctx.verifier, sandbox=ctx.sandbox, code_partial_credit=True)
    _, parts = score([answer("def f(x):\n    return 2")], [ADD], {"code": 1.0}, partial)
    assert parts["code"] == [0.5]


def test_step_metrics_average_each_component_over_the_prompts_it_scores():
    def sample(parts):
        return Sample([1], Completion([1], [0.0], "x", False), reward=0.0, parts=parts)

    batch = Batch(
        [
            sample({"accuracy": 1.0, "code": None}),
            sample({"accuracy": None, "code": 0.0}),
            sample({"accuracy": None, "code": 1.0}),
        ],
        1,
        0,
        0,
        1,
        0.0,
        0.0,
    )
    metrics = batch_metrics(batch, UpdateStats())
    assert metrics["reward/accuracy"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["reward/code"] == 0.5


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_generated_task_kind_is_solved_by_its_reference(ctx, kind):
    task = code_function_task(0, 7, kinds=[kind])
    assert task["kind"] == kind and len(task["tests"]) == 4 and is_code(task)
    _, parts = score([answer(task["answer"])], [task], {"code": 1.0}, ctx)
    assert parts["code"] == [1.0]
    assert code_function_task(0, 7, kinds=[kind]) == task  # item i comes from Random(seed + i)


def test_code_and_maths_prompts_mix_in_one_task_list():
    records = list(iter_reasoning_gym(["chain_sum", "code_functions"], 1000, 6))
    assert [is_code(r) for r in records] == [False, True] * 3
    cfg = compose(["stage=stage2", "data.tasks=[chain_sum,code_functions]"])
    assert cfg.stage.rewards["code"] == 1.0 and cfg.stage.rewards["accuracy"] == 1.0
    assert "code block" in chat(records[1], cfg.data.system_prompt)[0]["content"]  # its own system prompt
    assert chat(records[0], cfg.data.system_prompt)[0]["content"] == cfg.data.system_prompt


def test_code_jsonl_in_three_layouts(tmp_path, ctx):
    path = tmp_path / "code.jsonl"
    rows = [
        {
            "task_id": "H/0",
            "prompt": 'def inc(x):\n    """x + 1"""\n',
            "canonical_solution": "    return x + 1\n",
            "test": "def check(c):\n    assert c(1) == 2\n",
            "entry_point": "inc",
        },
        {
            "task_id": 7,
            "text": "Write a function to double n.",
            "code": "def dbl(n):\n    return 2 * n",
            "test_list": ["assert dbl(2) == 4", "assert dbl(0) == 0"],
            "test_setup_code": "",
        },
        {
            "prompt": "Return a * b.",
            "fn_name": "mul",
            "inputs": [[2, 3], [0, 5]],
            "outputs": [6, 0],
            "solution": "def mul(a, b):\n    return a * b",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = list(iter_code_file(str(path)))
    assert [r["task"] for r in records] == ["humaneval", "mbpp", "code_io"]
    assert records[2]["tests"] == ["assert mul(*[2, 3]) == 6", "assert mul(*[0, 5]) == 0"]
    solutions = [rows[0]["prompt"] + rows[0]["canonical_solution"], rows[1]["code"], rows[2]["solution"]]
    _, parts = score([answer(s) for s in solutions], records, {"code": 1.0}, ctx)
    assert parts["code"] == [1.0, 1.0, 1.0]
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"code.jsonl:1: not a code prompt"):
        list(iter_code_file(str(path)))


def test_humaneval_canonical_solutions_all_pass_and_broken_ones_all_fail(ctx):
    records = humaneval_records()
    assert len(records) == 164
    canonical = [answer(r["answer"]) for r in records]
    _, parts = score(canonical, records, {"code": 1.0}, ctx)
    assert sum(parts["code"]) == 164
    broken = [answer(r["setup"] + "    return None\n") for r in records[:8]]  # the stub, no body
    off_by_one = answer(records[0]["answer"].replace("distance < threshold", "distance <= threshold - 1"))
    _, parts = score(broken + [off_by_one], records[:8] + records[:1], {"code": 1.0}, ctx)
    assert parts["code"] == [0.0] * 9


def test_code_samples_flow_through_stage3_verification_and_filters(ctx):
    from stages.stage3_rs import verdicts

    task = code_function_task(3, 1000)
    right, wrong = answer(task["answer"]), answer(task["answer"].replace("return", "return 1 +"))
    groups = [[Completion([1, 2], [0.0, 0.0], t, False) for t in (right, wrong, right)]]
    correct, well_formed, judged = verdicts([task], groups, ctx, judge=None)
    assert correct == [[True, False, True]] and well_formed == [[True, True, True]] and judged == 0
    cfg = compose(["stage=stage3"]).stage  # readability.code_tasks is empty: code prompts are spared anyway
    rows, stats = select([task], groups, correct, well_formed, cfg, "en", "sys")
    assert len(rows) == 1 and rows[0]["messages"][-1]["content"] == right  # the duplicate is dropped
    assert stats.removed["incorrect"] == 1 and stats.removed["duplicate"] == 1 and stats.removed["code_block"] == 0
