"""SFT data: a plain registry of sources, row checks with file/line errors, and hashed JSONL output.

Every source returns chat rows `{"messages": [{"role", "content"}, …], …}`. A stage materialises
its rows once into its run folder (`data/train.jsonl`) and records the file's sha256 in its
manifest, so a resumed run reads exactly the same examples and later stages can trust the hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from omegaconf import DictConfig

from pipeline.data.r1format import is_r1_format
from pipeline.run.hub import input_path


class DataError(ValueError):
    """Bad input data; the message names the file and line (or row)."""


def load_coldstart(cfg: DictConfig) -> list[dict]:
    from pipeline.data.coldstart import examples

    tasks = list(cfg.tasks)
    if not tasks:
        raise DataError("config key 'data.tasks': empty task list")
    quotas = [cfg.num_examples // len(tasks) + (i < cfg.num_examples % len(tasks)) for i in range(len(tasks))]
    kwargs = {k: dict(v) for k, v in (cfg.task_kwargs or {}).items()}
    per_task = [list(examples(t, cfg.seed, cfg.system_prompt, q, kwargs.get(t))) for t, q in zip(tasks, quotas)]
    for t, q, rows in zip(tasks, quotas, per_task):
        if len(rows) < q:
            raise DataError(f"cold-start task {t!r}: only {len(rows)} of {q} examples could be written and verified")
    # interleave so every stretch of training sees every task
    return [rows[i] for i in range(max(quotas, default=0)) for rows in per_task if i < len(rows)]


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON is an error naming file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    return [(f"{path}:{lineno}", obj) for lineno, obj in iter_jsonl(path)]


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    return [(f"{path} row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]


def load_file(cfg: DictConfig) -> list[dict]:
    if not cfg.path:
        raise DataError("config key 'data.path': required for data.source=file")
    path = input_path(cfg.path, "data.path")
    if not path.exists():
        raise DataError(f"config key 'data.path': file not found: {path}")
    reader = _read_parquet if path.suffix == ".parquet" else _read_jsonl
    return normalise(reader(path), cfg)


def load_hub(cfg: DictConfig) -> list[dict]:
    if not cfg.hub_id:
        raise DataError("config key 'data.hub_id': required for data.source=hub")
    import datasets

    ds = datasets.load_dataset(cfg.hub_id, split=cfg.split)
    return normalise(((f"{cfg.hub_id}[{cfg.split}] row {i}", r) for i, r in enumerate(ds)), cfg)


SOURCES: dict[str, Callable[[DictConfig], list[dict]]] = {
    "coldstart": load_coldstart,
    "file": load_file,
    "hub": load_hub,
}


def normalise(rows: Iterable[tuple[str, dict]], cfg: DictConfig) -> list[dict]:
    """Turn user rows into chat rows; any malformed row is an error naming where it came from."""
    out = []
    for where, row in rows:
        if cfg.max_examples is not None and len(out) >= cfg.max_examples:
            break
        if cfg.messages_field in row and row[cfg.messages_field] is not None:
            messages = row[cfg.messages_field]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise DataError(f"{where}: '{cfg.messages_field}' must be a list of {{role, content}} strings")
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        elif cfg.prompt_field in row and cfg.response_field in row:
            prompt, response = row[cfg.prompt_field], row[cfg.response_field]
            if not isinstance(prompt, str) or not isinstance(response, str):
                raise DataError(f"{where}: '{cfg.prompt_field}' and '{cfg.response_field}' must be strings")
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        else:
            raise DataError(
                f"{where}: needs a '{cfg.messages_field}' column or both '{cfg.prompt_field}' and "
                f"'{cfg.response_field}' (set data.messages_field / data.prompt_field / data.response_field)"
            )
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: no assistant message to train on")
        if messages[0]["role"] != "system" and cfg.system_prompt:
            messages = [{"role": "system", "content": cfg.system_prompt}] + messages
        if cfg.require_r1_format:
            last = [m for m in messages if m["role"] == "assistant"][-1]["content"]
            if not is_r1_format(last):
                raise DataError(
                    f"{where}: assistant answer is not in R1 format (one <think>…</think> block, then an "
                    "answer with \\boxed{…}); fix the row or set data.require_r1_format=false"
                )
        # a row marked held_out is an evaluation prompt (stage-4's held-out general prompts): kept, flagged,
        # so a stage that trains on the set can leave it out
        out.append({"messages": messages, "held_out": True} if row.get("held_out") is True else {"messages": messages})
    if not out:
        raise DataError("no usable rows in the data source")
    return out


def load_rows(cfg: DictConfig) -> list[dict]:
    if cfg.source not in SOURCES:
        raise DataError(f"config key 'data.source': unknown source {cfg.source!r}; known: {sorted(SOURCES)}")
    return SOURCES[cfg.source](cfg)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl(rows: Iterable[dict], path: Path) -> str:
    """Write rows atomically (tmp + rename) and return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return sha256_file(path)


def write_json(obj, path: Path) -> None:
    """Write one JSON document atomically (tmp + rename): readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    return [r for _, r in _read_jsonl(path)]
