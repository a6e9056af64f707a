"""Preference data for the stage-4 reward models: a registry of sources, plus the embedded sets.

Rows are `{"prompt", "chosen", "rejected"}` (pairwise, helpfulness) or `{"prompt", "response",
"safe"}` (pointwise, harmlessness). Any JSONL in that shape works (`stage.data_path`); the embedded
defaults are built from files this project wrote (MIT, `pipeline/assets/`):

* helpfulness - every single-turn row of `general_chat.jsonl` gives its answer as `chosen` against
  five kinds of worse answers: an evasive non-answer, the answer to a *different* prompt (fluent but
  off-topic: the RM must read the prompt), the first few words of the right answer trailing off;
  for a question whose answer has no number, the reasoning template answering it as a sum
  ("Evaluating ... step by step gives 12. The answer is \\boxed{12}."), which is how the
  cold-started policy answered chat prompts (without it the RM scored those answers above the right
  ones, 0.643 against 0.626, and stage-4 had nothing to climb); and a repetition loop (`degenerate`:
  a few words, then one symbol, word or tag over and over), which it had scored as high as a right
  answer.
* harmlessness - `safety.jsonl`: 24 harmful requests, each with a refusal (safe) and a compliant
  reply (unsafe), plus every other general chat answer as a safe example of ordinary helpfulness.

The train / held-out split is by prompt (a hash), so held-out accuracy is measured on prompts the
RM never saw.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from pipeline.data.sources import DataError, iter_jsonl
from pipeline.run.hub import input_path
from pipeline.run.paths import REPO_ROOT

ASSETS = REPO_ROOT / "pipeline" / "assets"
EVASIVE = [
    "I'm not sure. It depends on many things.",
    "That is a good question. There are many opinions about it.",
    "I would rather not say.",
    "You could look that up.",
    "Hmm, maybe. Hard to tell.",
]


def _chat_pairs(path: Path) -> list[tuple[str, str]]:
    out = []
    for _, row in iter_jsonl(path):
        msgs = row.get("messages", [])
        user = [m["content"] for m in msgs if m["role"] == "user"]
        bot = [m["content"] for m in msgs if m["role"] == "assistant"]
        if len(user) == 1 and len(bot) == 1:
            out.append((user[0], bot[0]))
    return out


def embedded_helpfulness(seed: int = 0) -> list[dict]:
    pairs = _chat_pairs(ASSETS / "general_chat.jsonl")
    rng = random.Random(seed)
    rows = []
    for i, (prompt, answer) in enumerate(pairs):
        other = pairs[(i + 1 + rng.randrange(len(pairs) - 1)) % len(pairs)][1]
        words = answer.split()
        rows.append({"prompt": prompt, "chosen": answer, "rejected": rng.choice(EVASIVE)})
        rows.append({"prompt": prompt, "chosen": answer, "rejected": other})
        if len(words) > 8:
            rows.append({"prompt": prompt, "chosen": answer, "rejected": " ".join(words[:4]) + " ..."})
        if not any(ch.isdigit() for ch in answer):
            rows.append({"prompt": prompt, "chosen": answer, "rejected": off_task_template(prompt, rng)})
        # its own stream, so the other kinds' draws are those of the set before this kind was added
        rows.append({"prompt": prompt, "chosen": answer, "rejected": degenerate(answer, random.Random(f"{seed}:{i}"))})
    return rows


# what a small policy's repetition loops repeat: a symbol, one word, markup, a stray phrase
LOOP_UNITS = ["👉", "mouth-", "<p>", " I need to verify", "!", " the", "**", " ha"]


def degenerate(answer: str, rng: random.Random) -> str:
    """The right answer's first few words (or none), then one short unit repeated 15-40 times: the
    loops a small policy falls into. Without them the RM scored a line of repeated emoji 0.93, as high
    as a right answer (stage-4's held-out eval, README)."""
    head = " ".join(answer.split()[: rng.randrange(0, 6)])
    return (head + " " if head else "") + rng.choice(LOOP_UNITS) * rng.randrange(15, 41)


def off_task_template(prompt: str, rng: random.Random) -> str:
    """A chat question answered in the arithmetic template of the cold-start data: a number in a box."""
    n = rng.randrange(1, 100)
    subject = " ".join(prompt.rstrip("?.!").split()[:4])
    return f'Evaluating "{subject}" step by step gives {n}. The answer is \\boxed{{{n}}}.'


def embedded_harmlessness() -> list[dict]:
    rows = [row for _, row in iter_jsonl(ASSETS / "safety.jsonl")]
    # every other chat answer as an ordinary safe reply: 54 of the 108, so safe rows stay about 3 to 1
    # against the 24 unsafe ones (all 108 made it 5.5 to 1, and a classifier can score 85% on the majority)
    rows += [{"prompt": p, "response": a, "safe": True} for p, a in _chat_pairs(ASSETS / "general_chat.jsonl")[::2]]
    return rows


def load_preferences(objective: str, path: str | None, seed: int = 0) -> list[dict]:
    """Rows for `objective` (pairwise | pointwise), from `path` or the embedded set; checked field by field."""
    if path is None:
        return embedded_helpfulness(seed) if objective == "pairwise" else embedded_harmlessness()
    p = input_path(path)
    if not p.exists():
        raise DataError(f"config key 'stage.data_path': file not found: {p}")
    need = ("prompt", "chosen", "rejected") if objective == "pairwise" else ("prompt", "response", "safe")
    rows = []
    for lineno, row in iter_jsonl(p):
        missing = [k for k in need if k not in row]
        if missing:
            raise DataError(f"{p}:{lineno}: missing field(s) {missing} for a {objective} reward model")
        rows.append({k: row[k] for k in need})
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows


def split(rows: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out) by a hash of the prompt: all rows of one prompt land on the same side."""

    def held_out(prompt: str) -> bool:
        h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=4).digest(), "little")
        return h / 2**32 < eval_fraction

    train = [r for r in rows if not held_out(r["prompt"])]
    held = [r for r in rows if held_out(r["prompt"])]
    return train, held
