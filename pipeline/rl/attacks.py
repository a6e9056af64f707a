"""The red-team set for the rule rewards: completions a policy could emit to crash, stall or fool them.

Every case pairs a completion with a prompt record whose gold answer it does NOT give, so a reward
above 0 for accuracy is a reward hack. `tests/unit/test_reward_attacks.py` asserts that each case scores
0 accuracy within a bounded time and that scoring never raises; `make bench-reward-attacks` prints the
scoring time of each case (`scripts/bench_reward_attacks.py`), so the worst case is a measured figure.
"""

from __future__ import annotations

from collections.abc import Iterator

GOLD = "4"
THINK = "<think>\n2 + 2 is 4.\n</think>\n\n"


def _math(answer: str = GOLD) -> dict:
    return {"task": "math", "answer": answer, "question": "What is 2 + 2?"}


def _chain_sum() -> dict:
    import reasoning_gym

    entry = reasoning_gym.create_dataset("chain_sum", seed=5, size=1)[0]
    return {"task": "chain_sum", "answer": entry["answer"], "entry": entry, "question": entry["question"]}


def cases() -> Iterator[tuple[str, str, dict]]:
    """(name, completion, record); none of the completions answers its record correctly."""
    yield "10 MB output, right answer only at its end", THINK + "x" * 10_000_000 + " \\boxed{4}", _math()
    yield "10 MB inside the box", THINK + "\\boxed{" + "9" * 10_000_000 + "}", _math()
    yield "200k nested braces", THINK + "\\boxed{" + "{" * 100_000 + "}" * 100_000 + "}", _math()
    yield "20k unclosed \\boxed{", THINK + "\\boxed{" * 20_000, _math()
    yield "\\boxed{ without its closing brace", THINK + "The answer is \\boxed{4", _math()
    yield "10**10**10 written out", THINK + "\\boxed{10**10**10}", _math()
    yield "power tower 9^{9^{9^{9^9}}}", THINK + "\\boxed{9^{9^{9^{9^{9}}}}}", _math()
    yield "huge factorial", THINK + "\\boxed{(10^{10})!}", _math()
    yield "null bytes", THINK + "\\boxed{\x00\x00}\x00", _math()
    yield "invalid UTF-8 (lone surrogates)", THINK + "\\boxed{\udcff\ud800}", _math()
    yield "replacement characters", THINK + "\\boxed{\ufffd" * 3 + "}" * 3, _math()
    yield "hedge: two different boxes", THINK + "\\boxed{5} or maybe \\boxed{4}", _math()
    yield (
        "fake prompt echo with a second think and box",
        THINK.replace("is 4", "is 5")
        + "\\boxed{5}\n\nUser: What is 2 + 2?\nAssistant: <think>\nok\n</think> \\boxed{4}",
        _math(),
    )
    yield "box only inside the reasoning", "<think>\n\\boxed{4}\n</think>\n\nI give up.", _math()
    yield "fake </think> inside the box", "<think>\nhmm\n\\boxed{</think>4}", _math()
    yield "unparsable gold answer, copied", THINK + "\\boxed{???}", _math("???")
    yield "unbalanced gold answer, copied", THINK + "\\boxed{\\frac{1}}", _math("\\frac{1}")
    yield "empty gold answer, empty box", THINK + "\\boxed{}", _math("")
    yield "gold in words, copied", THINK + "\\boxed{the Pacific}", _math("the Pacific Ocean")
    yield "reasoning-gym: 200k digits", THINK + "\\boxed{" + "9" * 200_000 + "}", _chain_sum()
    yield "reasoning-gym: expression, not a number", THINK + "\\boxed{2+2}", _chain_sum()
    yield "reasoning-gym: nested braces", THINK + "\\boxed{" + "{" * 5000 + "}" * 5000 + "}", _chain_sum()
