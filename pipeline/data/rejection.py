"""Rejection sampling (R1 §2.3.3): keep only verified-correct, readable samples.

R1 sampled several responses per prompt from the RL checkpoint and kept only the correct ones,
"filtering out chain-of-thought with mixed languages, long paragraphs, and code blocks". Each sample
here goes through the filters below in order; the first one that fails removes it, and the stats
count removals per filter, so a run says exactly where its samples went:

  incorrect      - the accuracy reward (the stage-2 verifiers, or the judge) says it is wrong
  unverifiable   - no rule can check the gold answer and no judge is configured
  format         - not one `<think>…</think>` block followed by a `\\boxed{}` answer
  mixed_language - the CoT's share of target-language words is below `language_min_share`
  long_paragraph - a CoT paragraph (blank-line separated) has more than `max_paragraph_words` words
  code_block     - a ``` fence in a task that is not in `code_tasks`
  duplicate      - the same response (whitespace- and case-insensitive) was already kept for this prompt
  over_cap       - the prompt already has `max_per_prompt` kept samples

Everything here is pure: the stage module feeds it completions and verdicts, and writes what it
returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from pipeline.data.code_tasks import is_code
from pipeline.data.r1format import split_think
from pipeline.rl.rewards import MAX_COMPLETION_CHARS, language_share

FILTERS = (
    "incorrect",
    "unverifiable",
    "format",
    "mixed_language",
    "long_paragraph",
    "code_block",
    "duplicate",
    "over_cap",
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def longest_paragraph_words(text: str) -> int:
    return max((len(p.split()) for p in _PARAGRAPH_BREAK.split(text)), default=0)


def has_code_block(text: str) -> bool:
    return "```" in text


def readability_failure(
    completion: str, task: str, cfg: DictConfig, language: str, code_prompt: bool = False
) -> Optional[str]:
    """The first readability filter the sample fails, or None. `cfg` is `stage.readability`. A code
    prompt's answer is a code block by design (`code_prompt`), as are the tasks in `cfg.code_tasks`."""
    parts = split_think(completion[:MAX_COMPLETION_CHARS])
    cot = parts[0] if parts else completion
    share = language_share(cot, language)
    if share is not None and share < cfg.language_min_share:
        return "mixed_language"
    if longest_paragraph_words(cot) > cfg.max_paragraph_words:
        return "long_paragraph"
    if not code_prompt and task not in cfg.code_tasks and has_code_block(completion):
        return "code_block"
    return None


def dedup_key(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class ShardStats:
    prompts: int = 0
    samples: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FILTERS})
    # task -> {prompts, samples, correct, prompts_solved (>= 1 correct sample), kept}
    per_task: dict[str, dict[str, int]] = field(default_factory=dict)
    kept_lengths: list[int] = field(default_factory=list)  # response tokens of each kept sample
    judged: int = 0  # samples sent to the judge

    def to_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "kept": self.kept,
            "removed": dict(self.removed),
            "per_task": self.per_task,
            "kept_lengths": self.kept_lengths,
            "judged": self.judged,
        }

    @staticmethod
    def from_dict(d: dict) -> ShardStats:
        return ShardStats(
            prompts=d["prompts"],
            samples=d["samples"],
            kept=d["kept"],
            removed=dict(d["removed"]),
            per_task={k: dict(v) for k, v in d["per_task"].items()},
            kept_lengths=list(d["kept_lengths"]),
            judged=d.get("judged", 0),
        )

    def add(self, other: ShardStats) -> None:
        self.prompts += other.prompts
        self.samples += other.samples
        self.kept += other.kept
        self.judged += other.judged
        for k, v in other.removed.items():
            self.removed[k] = self.removed.get(k, 0) + v
        for task, d in other.per_task.items():
            mine = self.per_task.setdefault(task, {})
            for k, v in d.items():
                mine[k] = mine.get(k, 0) + v
        self.kept_lengths += other.kept_lengths


def rejection_reason(
    text: str,
    verdict: Optional[bool],
    well_formed: bool,
    task: str,
    readability: DictConfig,
    language: str,
    code_prompt: bool = False,
) -> Optional[str]:
    """Why a sample is dropped before dedup and the cap (a key of FILTERS), or None to keep it."""
    if verdict is None:
        return "unverifiable"
    if not verdict:
        return "incorrect"
    if not well_formed:
        return "format"
    return readability_failure(text, task, readability, language, code_prompt)


def sft_row(record: dict, text: str, task: str, system_prompt: str) -> dict:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": record["question"]}, {"role": "assistant", "content": text}]
    return {
        "messages": messages,
        "id": record["id"],
        "task": task,
        "answer": record["answer"],
        "origin": "rejection_sampling",
    }


def select(
    records: list[dict],
    completions: list[list],
    correct: list[list[Optional[bool]]],
    well_formed: list[list[bool]],
    cfg: DictConfig,
    language: str,
    system_prompt: str,
) -> tuple[list[dict], ShardStats]:
    """Filter one shard. completions[i] are prompt i's samples (`rollout.Completion`), correct[i][j] the
    verdict (None = unverifiable), well_formed[i][j] the format reward. Returns SFT chat rows and stats.
    `cfg` is the stage config (readability filters, samples cap)."""
    stats = ShardStats()
    rows: list[dict] = []
    readability = cfg.readability
    for record, group, verdicts, formats in zip(records, completions, correct, well_formed):
        task = record.get("task", "math")
        per_task = stats.per_task.setdefault(
            task, {"prompts": 0, "samples": 0, "correct": 0, "prompts_solved": 0, "kept": 0}
        )
        stats.prompts += 1
        per_task["prompts"] += 1
        seen: set[str] = set()
        kept_here = n_correct = 0
        for completion, verdict, fmt in zip(group, verdicts, formats):
            stats.samples += 1
            per_task["samples"] += 1
            n_correct += bool(verdict)
            reason = rejection_reason(completion.text, verdict, fmt, task, readability, language, is_code(record))
            if reason is None and readability.dedup:
                key = dedup_key(completion.text)
                reason = "duplicate" if key in seen else None
                seen.add(key)
            if reason is None and kept_here >= readability.max_per_prompt:
                reason = "over_cap"
            if reason is not None:
                stats.removed[reason] += 1
                continue
            kept_here += 1
            stats.kept += 1
            per_task["kept"] += 1
            stats.kept_lengths.append(len(completion.token_ids))
            rows.append(sft_row(record, completion.text, task, system_prompt))
        per_task["correct"] += n_correct
        per_task["prompts_solved"] += n_correct > 0
    return rows, stats


def length_summary(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    xs = sorted(lengths)

    def q(p: float) -> int:
        return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]

    edges = [xs[0] + (xs[-1] - xs[0]) * i / 10 for i in range(11)]
    hist = [0] * 10
    for x in xs:
        hist[min(9, int((x - xs[0]) / max(1e-9, xs[-1] - xs[0]) * 10))] += 1
    return {
        "count": len(xs),
        "mean": sum(xs) / len(xs),
        "min": xs[0],
        "p10": q(0.1),
        "p50": q(0.5),
        "p90": q(0.9),
        "max": xs[-1],
        "histogram": {"edges": [round(e, 1) for e in edges], "counts": hist},
    }


def summarise(stats: ShardStats) -> dict:
    """The stats file's content: totals, removals per filter, pass rate per task, lengths."""
    per_task = {}
    for task, d in sorted(stats.per_task.items()):
        per_task[task] = {
            **d,
            "sample_pass_rate": d["correct"] / max(1, d["samples"]),
            "prompt_pass_rate": d["prompts_solved"] / max(1, d["prompts"]),
        }
    return {
        "prompts_seen": stats.prompts,
        "samples_generated": stats.samples,
        "kept": stats.kept,
        "removed_by_filter": dict(stats.removed),
        "judged": stats.judged,
        "per_task": per_task,
        "kept_length_tokens": length_summary(stats.kept_lengths),
    }
