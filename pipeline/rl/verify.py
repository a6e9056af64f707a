"""Answer checking: math-verify in a fork-based worker pool with a hard kill, reasoning-gym scorers.

math-verify guards its parsing and sympy comparison with `signal.alarm`, which only works in a
process's main thread (off it, it raises) and only with whole seconds (a float timeout silently
returns False). So every check runs in the main thread of a forked worker, where those timeouts
work, and the parent adds a hard wall-clock limit: a worker stuck in sympy is killed and the pool
rebuilt, and that answer scores 0. Inputs are truncated first so a 100k-character completion cannot
stall a worker.

The workers come from a fork *server*, a fresh small interpreter, not from forking the caller: a
forked worker snapshots the whole trainer (model, optimizer, vLLM, ~10 GB in stage-2), and since
the trainer then rewrites its pages, each fork ends up holding its own copy. That is how a stage-2
run with a bf16 trainer was OOM-killed on a 24 GB machine (trainer 10.8 GB + workers 5.4 and 10 GB).
"""

from __future__ import annotations

import multiprocessing as mp
import re
from multiprocessing.pool import Pool
from typing import Optional

MAX_ANSWER_CHARS = 1000  # an extracted final answer longer than this is not a plausible answer
# A worker is replaced after this many checks, so memory that parsers leak cannot grow without bound.
TASKS_PER_WORKER = 500
_TIMEOUT_S = 5  # math-verify's own (integer-second) alarm inside the worker
PRELOAD = ["pipeline.rl.verify", "math_verify", "reasoning_gym"]


def _parse_gold(gold: str) -> list:
    """math-verify's reading of a gold answer, or [] when it finds no expression in it. math-verify falls
    back to the raw string ("???" parses to ["???"]) and `verify` then accepts the same string copied
    into the box; a gold answer no rule can read must never earn reward, so a string alone is not a parse."""
    from math_verify import parse

    for text in (f"${gold}$", gold):
        parsed = parse(text, parsing_timeout=_TIMEOUT_S)
        if any(not isinstance(p, str) for p in parsed):
            return parsed
    return []


def _math_equal(gold: str, pred: str) -> bool:
    """Runs in a worker's main thread. An unparsable gold answer never earns reward."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return False
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=_TIMEOUT_S)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_TIMEOUT_S))


_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")
_MATH_WORDS = {
    "sqrt",
    "frac",
    "dfrac",
    "pi",
    "inf",
    "infty",
    "sin",
    "cos",
    "tan",
    "cot",
    "sec",
    "csc",
    "log",
    "ln",
    "exp",
    "min",
    "max",
    "mod",
    "gcd",
    "lcm",
    "deg",
    "text",
    "mbox",
    "boxed",
    "cdot",
    "times",
    "and",
}


def is_free_text(gold: str) -> bool:
    """A gold answer in words ("the Pacific"), which no rule can check: math-verify would read it as a
    product of symbols. Units or `\\text{}` around a number do not count as words."""
    words = [w.lower() for w in _WORD.findall(_LATEX_CMD.sub(" ", gold))]
    digits = any(ch.isdigit() for ch in gold)
    return any(w not in _MATH_WORDS for w in words) and not (digits and len(words) <= 1)


def _gold_parses(gold: str) -> bool:
    """Whether math-verify can read the gold answer at all (if not, no rule can verify answers to it)."""
    return bool(_parse_gold(gold))


def _rg_equal(task: str, entry: dict, pred: str) -> bool:
    """reasoning-gym's own scorer, binarised: partial credit is not correctness."""
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)(pred, entry) == 1.0


def _check(job: tuple) -> bool:
    kind, args = job
    try:
        if kind == "gold":
            return _gold_parses(*args)
        return _math_equal(*args) if kind == "math" else _rg_equal(*args)
    except Exception:  # a crash on adversarial input is a wrong answer, not a crashed run
        return False


class Verifier:
    """Checks (gold, prediction) pairs in parallel; results keep the input order."""

    def __init__(self, workers: int = 2, hard_timeout_s: float = 15.0, check_fn=None):
        self.workers, self.hard_timeout_s = workers, hard_timeout_s
        self.check_fn = check_fn or _check  # module-level function (pickled by reference)
        self._pool: Optional[Pool] = None
        self.timeouts = 0

    def _get_pool(self) -> Pool:
        if self._pool is None:
            context = mp.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)  # workers start with the checkers imported
            self._pool = context.Pool(self.workers, maxtasksperchild=TASKS_PER_WORKER)
        return self._pool

    def check(self, jobs: list[tuple]) -> list[bool]:
        """jobs: ("math", (gold, pred)), ("rg", (task, entry, pred)) or ("gold", (gold,)) (is the gold answer
        parsable?); a last argument that is None or too long gives False."""
        results: list[Optional[bool]] = [None] * len(jobs)
        pending = []
        for i, (_kind, args) in enumerate(jobs):
            pred = args[-1]
            if pred is None or len(pred) > MAX_ANSWER_CHARS:
                results[i] = False
            else:
                pending.append(i)
        if pending:
            pool = self._get_pool()
            handles = [(i, pool.apply_async(self.check_fn, (jobs[i],))) for i in pending]
            killed = False
            for i, h in handles:
                try:
                    results[i] = bool(h.get(timeout=self.hard_timeout_s))
                except mp.TimeoutError:  # stuck beyond math-verify's own alarm: hard kill
                    results[i] = False
                    self.timeouts += 1
                    self._kill()
                    killed = True
                    break
            if killed:  # whatever the killed pool still owed us goes to a fresh pool
                rest = [i for i in pending if results[i] is None]
                for i, r in zip(rest, self.check([jobs[i] for i in rest])):
                    results[i] = r
        return [bool(r) for r in results]

    def _kill(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
