"""Rule-based rewards (R1 §2.2.2, §2.3.2): plain functions in one registry, picked by name.

Each reward maps (completions, prompt records, context) to one float per completion in [0, 1].
A stage's config names the components and their weights (`rl.rewards: {accuracy: 1.0, ...}`); the
total is the weighted sum and every component is logged separately.

* accuracy  - the final `\\boxed{}` of the answer part, checked against the gold answer: by
              reasoning-gym's own scorer for its tasks (binarised: 1.0 only), by math-verify for
              math. An unparsable gold answer never earns reward.
* format    - exactly one leading `<think>…</think>` with non-empty reasoning, then an answer part
              with exactly one `\\boxed{}` and no further think tags. Duplicated blocks earn 0.
* language  - R1's language-consistency reward: the share of the chain of thought's words that are
              in the target language, judged by Unicode script (see `language_share`).
* helpfulness, harmlessness - stage-4's reward models (σ of the RM logit): helpfulness sees only the
              answer after `</think>`, harmlessness the whole response.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from pipeline.data.r1format import THINK_CLOSE, THINK_OPEN, extract_boxed, split_think
from pipeline.rl.verify import Verifier

MAX_COMPLETION_CHARS = 20_000  # anything longer is cut before any regex or parser sees it


@dataclass
class RewardContext:
    verifier: Verifier = field(default_factory=Verifier)
    language: str = "en"
    # name -> scorer(prompts, responses) -> raw logits; stage-4's reward models (pipeline.rl.reward_model)
    reward_models: dict[str, Callable[[list[str], list[str]], list[float]]] = field(default_factory=dict)


def answer_part(completion: str) -> str:
    """Text after the last </think> (the whole completion if there is none), size-capped."""
    text = completion[:MAX_COMPLETION_CHARS]
    cut = text.rfind(THINK_CLOSE)
    return text[cut + len(THINK_CLOSE) :] if cut >= 0 else text


def extract_answer(completion: str) -> Optional[str]:
    return extract_boxed(answer_part(completion))


def accuracy_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    jobs = []
    for c, r in zip(completions, records):
        pred = extract_answer(c)
        task = r.get("task", "math")
        if task != "math" and r.get("entry") is not None:
            jobs.append(("rg", (task, r["entry"], pred)))
        else:
            jobs.append(("math", (str(r["answer"]), pred)))
    return [float(ok) for ok in ctx.verifier.check(jobs)]


def format_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    out = []
    for c in completions:
        c = c[:MAX_COMPLETION_CHARS]
        parts = split_think(c)
        ok = (
            parts is not None
            and parts[0].strip() != ""
            and THINK_OPEN not in parts[1]
            and parts[1].count("\\boxed{") == 1
            and extract_boxed(parts[1]) not in (None, "")
        )
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


def helpfulness_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    """R1 §2.3.4: the helpfulness RM judges only the final summary (the text after </think>), so the
    reasoning is not shaped by a preference model."""
    return _rm("helpfulness", [answer_part(c).strip() for c in completions], records, ctx)


def harmlessness_reward(completions: list[str], records: list[dict], ctx: RewardContext) -> list[float]:
    """R1 §2.3.4: the harmlessness RM judges the whole response, reasoning included."""
    return _rm("harmlessness", [c[:MAX_COMPLETION_CHARS] for c in completions], records, ctx)


RM_REWARDS = ("helpfulness", "harmlessness")
RewardFn = Callable[[list[str], list[dict], RewardContext], list[float]]
REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
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
    total = [sum(weights[n] * parts[n][i] for n in parts) for i in range(len(completions))]
    return total, parts
