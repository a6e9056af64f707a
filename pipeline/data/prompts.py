"""Prompt sets for RL, rejection sampling and evaluation: a plain registry of sources.

Every record is `{"id", "question", "answer", "task", "entry"}`; `task` picks the verifier
("math" -> math-verify, a reasoning-gym task name -> that task's scorer on `entry`). Code records
also carry `tests` (and `setup`, `system`), which the `code` reward runs (`pipeline.data.code_tasks`).

* reasoning_gym : a mixture of procedural tasks; item i of a task comes from Random(seed + i), so
                  the train and held-out seeds are kept far apart (data.seed vs data.eval_seed).
* code_file     : code JSONL in HumanEval, MBPP or input/output layout.
* file          : JSONL. GSM8K format (`answer` ending in "#### N") or MATH format (`answer` is the
                  final answer); field names are configurable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from omegaconf import DictConfig

from pipeline.data.code_tasks import PROJECT_TASKS, iter_code_file
from pipeline.data.sources import DataError, iter_jsonl
from pipeline.run.hub import input_path


def iter_reasoning_gym(tasks: list[str], seed: int, size: int, task_kwargs: dict | None = None) -> Iterator[dict]:
    """Items of several tasks, interleaved, generated lazily (reasoning-gym builds item i on access).
    Tasks this project writes (`code_tasks.PROJECT_TASKS`, e.g. code_functions) mix in the same way."""
    if not tasks:
        raise DataError("config key 'data.tasks': empty task list")
    per_task = [size // len(tasks) + (i < size % len(tasks)) for i in range(len(tasks))]
    sources = [_task_items(task, seed, n, (task_kwargs or {}).get(task)) for task, n in zip(tasks, per_task)]
    for i in range(max(per_task, default=0)):
        for n, items in zip(per_task, sources):
            if i < n:
                yield next(items)


def _task_items(task: str, seed: int, n: int, kwargs: dict | None) -> Iterator[dict]:
    if task in PROJECT_TASKS:
        return PROJECT_TASKS[task](seed, n, kwargs)
    return _reasoning_gym_items(task, seed, n, kwargs)


def _reasoning_gym_items(task: str, seed: int, n: int, kwargs: dict | None) -> Iterator[dict]:
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(task, seed=seed, size=max(n, 1), **dict(kwargs or {}))
    except Exception as e:
        raise DataError(f"config key 'data.tasks': reasoning-gym cannot build {task!r}: {e}") from None
    for i in range(n):
        item = dataset[i]
        yield {
            "id": f"{task}/{seed}/{i}",
            "question": item["question"],
            "answer": str(item["answer"]),
            "task": task,
            "entry": _jsonable(item),
        }


def reasoning_gym_prompts(tasks: list[str], seed: int, size: int, task_kwargs: dict | None = None) -> list[dict]:
    return list(iter_reasoning_gym(tasks, seed, size, task_kwargs))


def gsm8k_answer(text: str) -> str:
    """GSM8K's final answer: the text after '####', without thousands separators."""
    return text.split("####")[-1].strip().replace(",", "")


def iter_file(path: str, question_field: str, answer_field: str, limit: int | None = None) -> Iterator[dict]:
    """Prompts from JSONL, streamed line by line (the file may be far larger than memory)."""
    p = input_path(path)
    if not p.exists():
        raise DataError(f"config key 'data.path': file not found: {p}")
    n = 0
    for lineno, row in iter_jsonl(p):
        if limit is not None and n >= limit:
            return
        if question_field not in row or answer_field not in row:
            raise DataError(
                f"{p}:{lineno}: needs '{question_field}' and '{answer_field}' fields "
                "(set data.question_field / data.answer_field)"
            )
        answer = str(row[answer_field])
        answer = gsm8k_answer(answer) if "####" in answer else answer.strip()
        n += 1  # noqa: SIM113  (counts records yielded, not rows read)
        yield {
            "id": f"{p.name}:{lineno}",
            "question": str(row[question_field]),
            "answer": answer,
            "task": "math",
            "entry": None,
        }


def file_prompts(path: str, question_field: str, answer_field: str, limit: int | None = None) -> list[dict]:
    out = list(iter_file(path, question_field, answer_field, limit))
    if not out:
        raise DataError(f"{input_path(path)}: no prompts")
    return out


def load_prompts(cfg: DictConfig, split: str) -> list[dict]:
    """split: 'train' or 'eval' (held-out)."""
    out = list(iter_prompts(cfg, split))
    if not out:
        raise DataError(f"no {split} prompts from data.source={cfg.source!r}")
    return out


# reasoning-gym held-out candidates drawn per prompt wanted, so that enough remain after removing the
# questions the training prompts also contain (12% of 512 at the default difficulty, 34% at 1 digit)
HELD_OUT_HEADROOM = 4


def held_out_prompts(cfg: DictConfig, train: list[dict]) -> list[dict]:
    """Up to `data.eval_examples` held-out prompts, none of whose questions is among the training
    prompts (or repeated): procedurally generated sets repeat questions across seeds, and a question
    trained on is not held out."""
    seen = {r["question"] for r in train}
    if cfg.source == "reasoning_gym":
        kwargs = {k: dict(v) for k, v in (cfg.task_kwargs or {}).items()}
        size = cfg.eval_examples * HELD_OUT_HEADROOM
        candidates = iter_reasoning_gym(list(cfg.tasks), cfg.eval_seed, size, kwargs)
    else:
        candidates = iter_prompts(cfg, "eval")
    out = []
    for record in candidates:
        if len(out) >= cfg.eval_examples:
            break
        if record["question"] not in seen:
            seen.add(record["question"])
            out.append(record)
    if not out:
        raise DataError("no held-out prompts left once the training questions are removed (data.eval_*)")
    return out


def iter_prompts(cfg: DictConfig, split: str) -> Iterator[dict]:
    """Stream a prompt set (train or held-out eval) without holding it in memory."""
    if cfg.source not in PROMPT_SOURCES:
        raise DataError(
            f"config key 'data.source': unknown prompt source {cfg.source!r}; known: {sorted(PROMPT_SOURCES)}"
        )
    return PROMPT_SOURCES[cfg.source](cfg, split)


def count_prompts(cfg: DictConfig, split: str = "train") -> int:
    """How many prompts `iter_prompts` will yield (for progress bars and ETAs), cheaply."""
    if cfg.source == "reasoning_gym":
        return cfg.num_examples if split == "train" else cfg.eval_examples
    if cfg.source in ("file", "code_file"):
        path = input_path(cfg.path if split == "train" else cfg.eval_path)
        limit = cfg.max_examples if split == "train" else cfg.eval_examples
        with open(path, "rb") as f:
            n = sum(1 for line in f if line.strip())
        return min(n, limit) if limit is not None else n
    return sum(1 for _ in iter_prompts(cfg, split))


def _rg(cfg: DictConfig, split: str) -> Iterator[dict]:
    kwargs = {k: dict(v) for k, v in (cfg.task_kwargs or {}).items()}
    if split == "train":
        return iter_reasoning_gym(list(cfg.tasks), cfg.seed, cfg.num_examples, kwargs)
    return iter_reasoning_gym(list(cfg.tasks), cfg.eval_seed, cfg.eval_examples, kwargs)


def _file(cfg: DictConfig, split: str) -> Iterator[dict]:
    if split == "train":
        return iter_file(cfg.path, cfg.question_field, cfg.answer_field, cfg.max_examples)
    if not cfg.eval_path:
        raise DataError("config key 'data.eval_path': a held-out JSONL is needed with data.source=file")
    return iter_file(cfg.eval_path, cfg.question_field, cfg.answer_field, cfg.eval_examples)


def _code_file(cfg: DictConfig, split: str) -> Iterator[dict]:
    if split == "train":
        return iter_code_file(cfg.path, cfg.max_examples)
    if not cfg.eval_path:
        raise DataError("config key 'data.eval_path': a held-out JSONL is needed with data.source=code_file")
    return iter_code_file(cfg.eval_path, cfg.eval_examples)


PROMPT_SOURCES: dict[str, Callable[[DictConfig, str], Iterator[dict]]] = {
    "reasoning_gym": _rg,  # reasoning-gym tasks and the project's own (code_functions)
    "file": _file,  # maths JSONL (GSM8K, MATH)
    "code_file": _code_file,  # code JSONL (HumanEval, MBPP or input/output layout)
}


def chat(record: dict, system_prompt: str) -> list[dict]:
    """The prompt as chat turns. A record may carry its own system prompt (code prompts ask for a code
    block; stage-4's general prompts carry `stage.general_system_prompt`). An empty one means no system
    turn, i.e. the chat template's default, as for stage-3's general rows (`general.system_prompt: ""`)."""
    system = record["system"] if record.get("system") is not None else system_prompt
    user = [{"role": "user", "content": record["question"]}]
    return ([{"role": "system", "content": system}] if system else []) + user


def encode_prompts(tokenizer, records, system_prompt) -> list[list[int]]:
    """Chat-templated prompt token ids, ready for generation."""
    out = []
    for r in records:
        ids = tokenizer.apply_chat_template(chat(r, system_prompt), tokenize=True, add_generation_prompt=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def _jsonable(entry: dict) -> dict:
    return json.loads(json.dumps(entry, default=str))
