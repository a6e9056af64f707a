"""Rule-based rewards (R1 §2.2.2, §2.3.2): plain functions in one registry, picked by name.

Each reward maps (completions, prompt records, context) to one float per completion in [0, 1].
A stage's config names the components and their weights (`stage.rewards: {accuracy: 1.0, ...}`); the
total is the weighted sum and every component is logged separately. A component that does not
apply to a prompt (accuracy on a code prompt, code on a maths prompt) is None: it adds nothing to
the total and is left out of that component's mean.

* accuracy  - the `\\boxed{}` answer after the first `</think>` (boxes that disagree are a hedge and
              score 0), checked against the gold answer: by
              reasoning-gym's own scorer for its tasks (binarised: 1.0 only), by math-verify for
              math. An unparsable gold answer never earns reward.
* format    - exactly one leading `<think>…</think>` with non-empty reasoning, then an answer part
              with exactly one `\\boxed{}` and no further think tags. Duplicated blocks earn 0.
* language  - R1's language-consistency reward: the share of the chain of thought's words that are
              in the target language, judged by Unicode script (see `language_share`).
* code      - the program in the answer part (its last fenced code block after `</think>`), run
              against the prompt's tests in the sandbox (`pipeline.rl.sandbox`): 1.0 when every test
              passes (R1's accuracy reward for code is binary), or the fraction of tests passed
              with `stage.code.partial_credit`. Code prompts carry `tests` (`pipeline.data.code_tasks`).
* lenient   - R1-Zero's warm-up for a base model that never writes `\\boxed{}`: 1.0 when the last
              number of the completion equals the numeric gold answer, with no format asked; None for
              code prompts and non-numeric gold. Off by default (weight 0 or absent): a boxed right
              answer also earns it, so boxing stays strictly better.
* helpfulness, harmlessness - stage-4's reward models (σ of the RM logit): helpfulness sees only the
              answer after `</think>` (0 when that summary is empty or holds think tags: a rule gate),
              harmlessness the whole response.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from pipeline.data.code_tasks import is_code
from pipeline.data.r1format import THINK_CLOSE, THINK_OPEN, boxed_all, extract_boxed, split_think
from pipeline.rl.sandbox import Sandbox
from pipeline.rl.verify import Verifier

MAX_COMPLETION_CHARS = 20_000  # anything longer is cut before any regex or parser sees it


@dataclass
class RewardContext:
    verifier: Verifier = field(default_factory=Verifier)
    language: str = "en"
    sandbox: Optional[Sandbox] = None  # runs code prompts' tests; made on first use if None
    code_partial_credit: bool = False  # code reward = fraction of tests passed instead of all-or-nothing
    # name -> scorer(prompts, responses) -> raw logits; stage-4's reward models (pipeline.rl.reward_model)
    reward_models: dict[str, Callable[[list[str], list[str]], list[float]]] = field(default_factory=dict)


def answer_part(completion: str) -> str:
    """Text after the first </think> (the whole completion if there is none), size-capped. The first:
    a fake think block written after the answer must not hide the answer that came before it."""
    text = completion[:MAX_COMPLETION_CHARS]
    cut = text.find(THINK_CLOSE)
    return text[cut + len(THINK_CLOSE) :] if cut >= 0 else text


def extract_answer(completion: str) -> Optional[str]:
    """The boxed final answer of the answer part. Boxes that disagree ("\\boxed{5} or \\boxed{4}", or an
    echoed prompt with a second answer) are a hedge, and a hedge is no answer: None."""
    boxes = boxed_all(answer_part(completion))
    return boxes[-1] if boxes and len(set(boxes)) == 1 else None


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> Optional[str]:
    """The last fenced code block of the answer part (after `</think>`), or None."""
    blocks = _FENCE.findall(answer_part(completion))
    return blocks[-1][1] if blocks else None


def accuracy_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[Optional[float]]:
    """Maths and reasoning-gym answers; None for code prompts (the `code` reward checks those)."""
    out: list[Optional[float]] = [None] * len(completions)
    jobs, where = [], []
    for i, (c, r) in enumerate(zip(completions, records)):
        if is_code(r):
            continue
        where.append(i)
        pred = extract_answer(c)
        task = r.get("task", "math")
        if task != "math" and r.get("entry") is not None:
            jobs.append(("rg", (task, r["entry"], pred)))
        else:
            jobs.append(("math", (str(r["answer"]), pred)))
    for i, ok in zip(where, ctx.verifier.check(jobs) if jobs else []):
        out[i] = float(ok)
    return out


def code_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[Optional[float]]:
    """Code prompts: run the extracted program against the tests (batched, in parallel); None elsewhere."""
    out: list[Optional[float]] = [None if not is_code(r) else 0.0 for r in records]
    jobs, where = [], []
    for i, (c, r) in enumerate(zip(completions, records)):
        program = extract_program(c) if is_code(r) else None
        if program is not None:
            jobs.append((program, list(r["tests"]), r.get("setup") or ""))
            where.append(i)
    if jobs:
        ctx.sandbox = ctx.sandbox or Sandbox()
        for i, outcome in zip(where, ctx.sandbox.run_many(jobs)):
            out[i] = outcome.fraction if ctx.code_partial_credit else float(outcome.passed)
    return out


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number_correct(completion: str, gold: str) -> Optional[bool]:
    """Is the last number in `completion` equal to a numeric `gold`? None when gold is not a number."""
    try:
        target = float(str(gold).replace(",", "").strip())
    except ValueError:
        return None
    found = _NUMBER.findall(completion[:MAX_COMPLETION_CHARS].replace(",", ""))
    return bool(found) and abs(float(found[-1]) - target) < 1e-9


def lenient_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[Optional[float]]:
    """The last number against the gold answer, no format asked; None for code and non-numeric gold."""
    out: list[Optional[float]] = []
    for c, r in zip(completions, records):
        ok = None if is_code(r) or r.get("answer") is None else last_number_correct(c, r["answer"])
        out.append(None if ok is None else float(ok))
    return out


def format_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    """One leading non-empty think block, no think tags after it, then the answer: exactly one
    non-empty `\\boxed{}`, or for a code prompt at least one fenced code block."""
    out = []
    for c, r in zip(completions, records):
        parts = split_think(c[:MAX_COMPLETION_CHARS])
        ok = parts is not None and parts[0].strip() != "" and THINK_OPEN not in parts[1]
        if ok and is_code(r):
            ok = bool(_FENCE.search(parts[1]))
        elif ok:
            ok = parts[1].count("\\boxed{") == 1 and extract_boxed(parts[1]) not in (None, "")
        out.append(float(ok))
    return out


# Scripts by Unicode character-name prefix; a language is the set of scripts it is written in.
_SCRIPT_OF_NAME = (
    ("CJK UNIFIED", "han"),
    ("CJK COMPATIBILITY IDEOGRAPH", "han"),
    ("HIRAGANA", "kana"),
    ("KATAKANA", "kana"),
    ("HANGUL", "hangul"),
    ("LATIN", "latin"),
    ("CYRILLIC", "cyrillic"),
    ("GREEK", "greek"),
    ("ARABIC", "arabic"),
    ("HEBREW", "hebrew"),
    ("DEVANAGARI", "devanagari"),
    ("THAI", "thai"),
)
LANGUAGE_SCRIPTS: dict[str, set[str]] = {
    **{lang: {"latin"} for lang in ("en", "fr", "de", "es", "it", "pt", "nl", "vi", "id", "tr", "pl")},
    "zh": {"han"},
    "ja": {"han", "kana"},
    "ko": {"hangul"},
    "ru": {"cyrillic"},
    "uk": {"cyrillic"},
    "el": {"greek"},
    "ar": {"arabic"},
    "he": {"hebrew"},
    "hi": {"devanagari"},
    "th": {"thai"},
}
_IDEOGRAPHIC = {"han", "kana", "thai"}  # written without spaces: every character counts as a word
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+|```.*?```", re.DOTALL)


def _script(ch: str) -> Optional[str]:
    name = unicodedata.name(ch, "")
    for prefix, script in _SCRIPT_OF_NAME:
        if name.startswith(prefix):
            return script
    return None


def language_share(text: str, language: str) -> Optional[float]:
    """Share of words written in `language`'s script(s); None if the text has no words at all.

    LaTeX, inline math and code are removed first, and single letters of alphabetic scripts are
    ignored (x, π are maths, not language). Ideographic scripts count per character. Limitation:
    languages sharing a script (English vs French) are not told apart; the mixing R1 fought was
    across scripts (Chinese/English).
    """
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"language {language!r} not supported; known: {sorted(LANGUAGE_SCRIPTS)}")
    target = LANGUAGE_SCRIPTS[language]
    words: list[str] = []  # the script of each word
    run_script, run_len = None, 0
    for ch in _MATH.sub(" ", text) + " ":
        s = _script(ch) if ch.isalpha() else None
        if s != run_script or s in _IDEOGRAPHIC:  # a word ends where its script changes
            if run_script is not None and (run_len > 1 or run_script in _IDEOGRAPHIC):
                words.append(run_script)
            run_script, run_len = s, 0
        run_len += 1
    if not words:
        return None
    return sum(w in target for w in words) / len(words)


def language_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    out = []
    for c in completions:
        parts = split_think(c[:MAX_COMPLETION_CHARS])
        if parts is None or not parts[0].strip():
            out.append(0.0)  # no chain of thought to be consistent in
            continue
        share = language_share(parts[0], ctx.language)
        out.append(1.0 if share is None else share)  # pure arithmetic has nothing to mix
    return out


def _rm(name: str, completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    if name not in ctx.reward_models:
        raise ValueError(f"reward {name!r} needs a reward model (stage.reward_models.{name})")
    import math

    scores = ctx.reward_models[name]([r["question"] for r in records], completions)
    return [1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x)))) for x in scores]  # σ(logit) in [0, 1]


def clean_summary(completion: str) -> bool:
    """A response whose summary can be judged: the text after the first </think> is not empty and holds
    no think tag (no second, unclosed or looping think block: `<think>\n\n</think>` repeated to the
    token limit is a degenerate answer the helpfulness RM had never seen and scored up to 0.8)."""
    summary = answer_part(completion)
    return bool(summary.strip()) and THINK_OPEN not in summary and THINK_CLOSE not in summary


def helpfulness_rm(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    """The helpfulness RM's σ-score of each summary (the text after </think>), not gated: for reports."""
    return _rm("helpfulness", [answer_part(c).strip() for c in completions], records, ctx)


def helpfulness_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    """R1 §2.3.4: the helpfulness RM judges only the final summary (the text after </think>), so the
    reasoning is not shaped by a preference model. A response whose summary is not clean
    (`clean_summary`: empty, or think tags in it) earns 0: a rule gate in front of the RM, as the
    format reward is for reasoning prompts, so the policy cannot climb the RM with tag loops."""
    return gate_helpfulness(helpfulness_rm(completions, records, ctx), completions)


def gate_helpfulness(raw: list[float], completions: list[str]) -> list[float]:
    """The helpfulness reward from the RM's raw scores: 0 where the summary is not clean."""
    return [r if clean_summary(c) else 0.0 for r, c in zip(raw, completions)]


def harmlessness_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    """R1 §2.3.4: the harmlessness RM judges the whole response, reasoning included."""
    return _rm("harmlessness", [c[:MAX_COMPLETION_CHARS] for c in completions], records, ctx)


RM_REWARDS = ("helpfulness", "harmlessness")
RewardFn = Callable[[list[str], list[dict], RewardContext], list[float]]
REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,  # maths and reasoning-gym answers
    "code": code_reward,  # programs run against tests in the sandbox
    "format": format_reward,
    "lenient": lenient_reward,  # last number right, no format (R1-Zero on a base model that never boxes)
    "language": language_reward,
    "helpfulness": helpfulness_reward,  # reward model, general prompts (stage-4)
    "harmlessness": harmlessness_reward,  # reward model, general prompts (stage-4)
}


def score(
    completions: list[str], records: list[dict], weights: dict[str, float], ctx: RewardContext
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total per completion, and each component's raw values for logging."""
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown reward(s) {sorted(unknown)}; known: {sorted(REWARDS)}")
    parts = {name: REWARDS[name](completions, records, ctx) for name, w in weights.items()}
    total = [sum(weights[n] * parts[n][i] for n in parts if parts[n][i] is not None) for i in range(len(completions))]
    return total, parts


def correctness(parts: dict[str, list]) -> list[float]:
    """Per completion: was the answer right, whatever the domain (accuracy, else code, else 0)."""
    n = len(next(iter(parts.values()))) if parts else 0
    out = []
    for i in range(n):
        value = next((parts[k][i] for k in ("accuracy", "code") if k in parts and parts[k][i] is not None), 0.0)
        out.append(float(value))
    return out
