"""Cold-start chain-of-thought examples written from reasoning-gym tasks (R1 §2.3.1).

R1 collected thousands of long, readable CoT examples to stabilise the start of RL. For the
embedded default we write them ourselves from procedural tasks that carry gold answers:

* `chain_sum`, `basic_arithmetic`: the item's expression is parsed with `ast` and reduced one
  operation at a time (precedence, then left to right), each step written out, followed by a
  check of the last step - the "wait, let me verify" habit R1 wants the model to keep.
* `gsm_symbolic`: the item's own worked solution (`answer_cot`) becomes the reasoning.

Every example is verified with the task's own scorer before it is kept, so a writer bug can only
lose examples, never teach a wrong answer.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Optional

from pipeline.data.r1format import extract_boxed, format_response

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "×", ast.Div: "÷"}


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _literal(node: ast.AST) -> Optional[Fraction]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def _const(x: Fraction) -> ast.AST:
    if x.denominator != 1:  # the tasks we write for have integer answers; skip the rest
        raise ValueError(f"non-integer intermediate {x}")
    v = int(x)
    return ast.Constant(v) if v >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-v))


def _is_atom(node: ast.AST) -> bool:
    """A number as written: 7 or -7 (not --7, which still needs a step)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float))


Step = tuple[str, str, str, str]  # (a, op, b, result); op "neg" is a negation


def _reduce_once(node: ast.AST) -> tuple[ast.AST, Optional[Step]]:
    """Reduce the leftmost innermost operation; returns (new node, step) or (node, None) if done."""
    if _is_atom(node):
        return node, None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner, step = _reduce_once(node.operand)
        if step is not None:
            return ast.UnaryOp(node.op, inner), step
        val = _literal(inner)
        res = -val if isinstance(node.op, ast.USub) else val
        return _const(res), (_fmt(val), "neg", "", _fmt(res))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        if _is_atom(node.left) and _is_atom(node.right):
            a, b = _literal(node.left), _literal(node.right)
            if isinstance(node.op, ast.Div) and b == 0:
                raise ZeroDivisionError
            res = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b}[
                type(node.op)
            ]()
            return _const(res), (_fmt(a), _OPS[type(node.op)], _fmt(b), _fmt(res))
        left, step = _reduce_once(node.left)
        if step is not None:
            return ast.BinOp(left, node.op, node.right), step
        right, step = _reduce_once(node.right)
        return ast.BinOp(node.left, node.op, right), step
    raise ValueError(f"unsupported expression node {ast.dump(node)}")


def _show(node: ast.AST) -> str:
    return ast.unparse(node).replace("*", "×").replace("/", "÷")


def arithmetic_cot(expression: str) -> tuple[str, str]:
    """(reasoning, answer) for an arithmetic expression, reduced step by step."""
    node = ast.parse(expression.strip(), mode="eval").body
    lines = [
        f"I need to evaluate {_show(node)}.",
        "Multiplication and division come before addition and subtraction; otherwise I go left to right.",
    ]
    last = None
    for _ in range(64):
        node, step = _reduce_once(node)
        if step is None:
            break
        a, op, b, res = step
        rest = _show(node)
        if op == "neg":
            text = f"The negative of {a} is {res}."
        else:
            last = step
            text = f"{a} {op} {b} = {res}."
        lines.append(text + ("" if rest == res else f" Now the expression is {rest}."))
    answer = _fmt(_literal(node)) if _literal(node) is not None else _show(node)
    if last is not None:
        a, op, b, res = last
        inverse = {"+": ("-", b, a), "-": ("+", b, a), "×": ("÷", b, a), "÷": ("×", b, a)}[op]
        if not (op == "×" and b == "0") and not (op == "÷" and res == "0"):
            lines.append(f"Wait, let me verify the last step: {res} {inverse[0]} {inverse[1]} = {inverse[2]}. Correct.")
    lines.append(f"So the value is {answer}.")
    return "\n".join(lines), answer


def gsm_cot(item: dict) -> tuple[str, str]:
    cot = item["metadata"]["answer_cot"]
    reasoning = "\n".join(line for line in cot.splitlines() if not line.strip().startswith("####")).strip()
    return reasoning, str(item["answer"]).strip()


def _arith_writer(item: dict) -> tuple[str, str, str]:
    reasoning, answer = arithmetic_cot(item["metadata"]["expression"])
    return reasoning, f"Evaluating {item['metadata']['expression'].strip()} step by step gives {answer}.", answer


def _gsm_writer(item: dict) -> tuple[str, str, str]:
    reasoning, answer = gsm_cot(item)
    return reasoning, f"Working through the quantities step by step gives {answer}.", answer


WRITERS: dict[str, Callable[[dict], tuple[str, str, str]]] = {
    "chain_sum": _arith_writer,
    "basic_arithmetic": _arith_writer,
    "gsm_symbolic": _gsm_writer,
}


def code_examples(seed: int, limit: int, task_kwargs: dict | None = None) -> Iterator[dict]:
    """Cold-start examples for the project's code tasks: the reasoning says what the function must do
    and checks one test by hand; the answer is the reference function in a ```python block. Each
    example's program is run against its tests in the sandbox before it is kept."""
    from pipeline.data.code_tasks import iter_code_functions
    from pipeline.rl.rewards import RewardContext, score

    items = list(iter_code_functions(seed, limit, task_kwargs))
    responses = [code_response(item) for item in items]
    _, parts = score(responses, items, {"code": 1.0, "format": 1.0}, RewardContext())
    for item, response, passed, formatted in zip(items, responses, parts["code"], parts["format"]):
        if passed == 1.0 and formatted == 1.0:  # verified, or dropped
            yield {
                "messages": [
                    {"role": "system", "content": item["system"]},
                    {"role": "user", "content": item["question"]},
                    {"role": "assistant", "content": response},
                ],
                "task": item["task"],
                "answer": item["answer"],
            }


def code_response(item: dict) -> str:
    name_and_args = item["question"].split("`")[1]
    check = item["tests"][0].removeprefix("assert ")
    reasoning = (
        f"I need a function {name_and_args} that returns {item['question'].split(' that returns ')[1]}".split("\n")[0]
        + f"\nThe body can be a single return statement, {item['why']}.\n"
        f"Let me verify with the first test: {check}. Correct."
    )
    return f"<think>\n{reasoning}\n</think>\n\nHere is the function.\n\n```python\n{item['answer']}```"


def examples(task: str, seed: int, system_prompt: str, limit: int, task_kwargs: dict | None = None) -> Iterator[dict]:
    """Yield up to `limit` verified R1-format chat examples for one task (reasoning-gym's, or code_functions)."""
    import reasoning_gym

    if task == "code_functions":
        yield from code_examples(seed, limit, task_kwargs)
        return
    if task not in WRITERS:
        raise ValueError(f"config key 'data.tasks': no cold-start writer for task {task!r}; known: {sorted(WRITERS)}")
    size = max(2 * limit, 16)
    ds = reasoning_gym.create_dataset(task, seed=seed, size=size, **(task_kwargs or {}))
    kept = 0
    for i in range(size):
        if kept >= limit:
            return
        item = ds[i]
        try:
            reasoning, summary, answer = WRITERS[task](item)
        except (ValueError, ZeroDivisionError, SyntaxError, KeyError):
            continue
        response = format_response(reasoning, summary, answer)
        if ds.score_answer(extract_boxed(response), item) != 1.0:  # verified, or dropped
            continue
        kept += 1
        yield {
            "messages": [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": item["question"]},
                {"role": "assistant", "content": response},
            ],
            "task": task,
            "answer": str(item["answer"]),
        }
