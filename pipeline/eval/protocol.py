"""Held-out evaluation as R1 reports it (§3): greedy accuracy, pass@1 averaged over k samples, cons@k.

* greedy   - one temperature-0 answer per prompt.
* pass@1   - k samples per prompt at `temperature`/`top_p` (R1: 0.6 / 0.95); the mean correctness of
             all samples, which is far less noisy than one greedy answer per prompt.
* pass@k   - unbiased estimator from the same k samples (`maths.pass_at_k`).
* cons@k   - majority vote over the k samples' final answers (`maths.majority_vote`); the voted
             answer is correct if the samples that gave it were verified correct.
* lenient  - greedy answers judged by their last number alone, with no format required
             (`last_number_correct`). A read-out for models that do not write `\boxed{}` (the base
             model, a student early in training), so a gain is not just the format being learnt. Only
             numeric gold answers count; the strict metrics above are the ones RL and R1 use.

Answers are checked by the reward registry's accuracy function (the same verifiers as RL), so eval
and reward can never disagree about what is correct. Used by the RL stages' periodic evaluation and
by `make eval` (`stages/evaluate.py`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Optional

from pipeline.data.code_tasks import is_code
from pipeline.eval.maths import majority_vote, pass_at_k
from pipeline.rl.rewards import (
    RewardContext,
    clean_summary,
    correctness,
    extract_answer,
    extract_program,
    gate_helpfulness,
    helpfulness_rm,
    last_number_correct,
    score,
)
from pipeline.rl.rollout import Sampling, request_seed


def vote_key(completion: str, record: Optional[dict] = None) -> Optional[str]:
    """The final answer in a canonical spelling for voting: no spaces or $, numbers as numbers; for a
    code prompt, the program with its whitespace collapsed (samples vote for identical programs)."""
    if record is not None and is_code(record):
        program = extract_program(completion)
        return " ".join(program.split()) if program and program.strip() else None
    ans = extract_answer(completion)
    if ans is None:
        return None
    key = re.sub(r"\s+|\$|\\!|\\,", "", ans).rstrip(".")
    try:
        value = float(key.replace(",", ""))
        return repr(int(value)) if value.is_integer() else repr(value)
    except ValueError:
        return key or None


# What counts as right: maths answers (accuracy) or programs passing their tests (code), and the format.
CHECKS = {"accuracy": 1.0, "code": 1.0, "format": 1.0}
# R1 §3: pass@1 is measured on samples at temperature 0.6 and top-p 0.95.
R1_EVAL_TEMPERATURE = 0.6
R1_EVAL_TOP_P = 0.95


def evaluate_prompts(
    rollout,
    prompt_ids: list[list[int]],
    records: list[dict],
    ctx: RewardContext,
    *,
    sampling: Sampling,
    seed: int,
    stop_ids: list[int],
    greedy: bool = True,
    rank: int = 0,
    world: int = 1,
) -> tuple[dict, list[dict]]:
    """Metrics over a prompt set and one row per prompt (answers, verdicts) for inspection.
    `sampling.n` answers per prompt for pass@1 / pass@k / cons@k (0 = greedy only).

    On `world` processes each rank generates prompts rank, rank + world, ... (sampling seeds follow the
    prompt's index, so the answers are those of one process), the rows are gathered once, and every
    rank returns the same metrics and rows, in prompt order."""
    mine = list(range(rank, len(prompt_ids), world))
    rows = prompt_rows(
        rollout,
        [prompt_ids[i] for i in mine],
        [records[i] for i in mine],
        ctx,
        sampling=sampling,
        seed=seed,
        stop_ids=stop_ids,
        greedy=greedy,
        indices=mine,
    )
    rows = _gathered(mine, rows, world)
    return summarise(rows, sampling, greedy), rows


def evaluate_general(
    rollout,
    prompt_ids: list[list[int]],
    records: list[dict],
    ctx: RewardContext,
    rewards: list[str],
    *,
    max_tokens: int,
    stop_ids: list[int],
    rank: int = 0,
    world: int = 1,
    sampling: Optional[Sampling] = None,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Greedy answers to prompts that have no gold answer (stage-4's held-out general prompts), each
    scored by the reward-model rewards named in `rewards` through the RL reward registry, so an answer
    is judged exactly as in training (helpfulness sees only the summary). Sharded like `evaluate_prompts`;
    returns the mean score per reward (`rm/<name>`; `rm/helpfulness_raw`, the RM before the clean-summary
    gate; `general_clean`, the share of clean summaries) and one row per prompt, for a paired test.
    With `sampling.n` > 0 each prompt also gets n sampled answers (seeded by its index), and each reward
    their mean, `<name>_sampled`: one greedy answer per prompt swings its RM score by up to ±0.7 when a
    small update changes it, the mean of n is a steadier per-prompt figure for the paired tests."""
    mine = list(range(rank, len(prompt_ids), world))  # may be empty: generate is still called (prompt_rows)
    texts = [g[0].text for g in _greedy_outputs(rollout, [prompt_ids[i] for i in mine], max_tokens, stop_ids)]
    mine_records = [records[i] for i in mine]
    _, parts = score(texts, mine_records, {name: 1.0 for name in rewards if name != "helpfulness"}, ctx)
    if "helpfulness" in rewards:  # one RM pass: the gated reward, and the RM's own score so the gate's share shows
        raw = helpfulness_rm(texts, mine_records, ctx)
        parts |= {"helpfulness": gate_helpfulness(raw, texts), "helpfulness_raw": raw}
    rows = [
        {"id": records[i]["id"], "greedy": text, "clean": clean_summary(text), **{k: v[j] for k, v in parts.items()}}
        for j, (i, text) in enumerate(zip(mine, texts))
    ]
    names = list(parts)
    if sampling is not None and sampling.n > 0:
        seeds = [request_seed(seed, -2, i) for i in mine]
        _sampled_general(
            rollout, [prompt_ids[i] for i in mine], mine_records, ctx, rewards, sampling, rows, stop_ids, seeds
        )
        names += [f"{name}_sampled" for name in rewards]
    rows = _gathered(mine, rows, world)
    out = {f"rm/{name}": _mean(r[name] for r in rows) for name in names}
    return out | {"general_clean": _mean(float(r["clean"]) for r in rows)}, rows


def _sampled_general(rollout, prompt_ids, records, ctx, rewards, sampling: Sampling, rows, stop_ids, seeds) -> None:
    """`<name>_sampled` on each row: the mean of each reward over the prompt's `sampling.n` sampled answers."""
    k = sampling.n
    outs = rollout.generate(prompt_ids, sampling, seeds=seeds, stop_token_ids=stop_ids)
    texts = [c.text for g in outs for c in g]
    _, parts = score(texts, [r for r in records for _ in range(k)], {name: 1.0 for name in rewards}, ctx)
    for i, row in enumerate(rows):
        row.update({f"{name}_sampled": _mean(parts[name][i * k : (i + 1) * k]) for name in rewards})


def _gathered(mine: list[int], rows: list[dict], world: int) -> list[dict]:
    """Every rank's rows (rank r holds prompts r, r + world, ...), in prompt order, on every rank."""
    if world == 1:
        return rows
    from pipeline.train.dist import all_gather_objects

    return [row for _, row in sorted(pair for part in all_gather_objects(list(zip(mine, rows))) for pair in part)]


def prompt_rows(
    rollout, prompt_ids, records, ctx, *, sampling: Sampling, seed, stop_ids, greedy, indices
) -> list[dict]:
    """One row per prompt: its answers and every per-prompt figure `summarise` needs. `indices`: the
    prompts' positions in the whole set (they seed the sampled answers)."""
    rows = [{"id": r["id"], "task": r.get("task"), "gold": r["answer"]} for r in records]
    # a rank with no prompt (fewer prompts than ranks) still calls generate: the ranks sharing one
    # tensor-parallel engine must all submit; the rollout answers an empty list at once otherwise
    if greedy:
        _greedy(rollout, prompt_ids, records, ctx, sampling.max_tokens, stop_ids, rows)
    if sampling.n > 0:
        _sampled(
            rollout, prompt_ids, records, ctx, sampling, [request_seed(seed, -1, i) for i in indices], stop_ids, rows
        )
    return rows


def summarise(rows: list[dict], sampling: Sampling, greedy: bool = True) -> dict:
    """The set's metrics from its rows (so that rows gathered from several ranks give one process's figures)."""
    metrics: dict = {"n": len(rows)}
    if greedy:
        metrics.update(
            greedy_accuracy=_mean(r["greedy_correct"] for r in rows),
            greedy_format=_mean(r["greedy_format"] for r in rows),
            greedy_len_mean=_mean(r["greedy_len"] for r in rows),
        )
        lenient = [r["lenient"] for r in rows if r["lenient"] is not None]
        if lenient:
            metrics["greedy_lenient"] = _mean(lenient)
    k = sampling.n
    if k > 0:
        pass1 = [r["samples_correct"] / k for r in rows]
        metrics.update(
            {
                "pass@1": _mean(pass1),
                f"pass@{k}": _mean(pass_at_k(k, r["samples_correct"], k) for r in rows),
                f"cons@{k}": _mean(float(r["cons_correct"]) for r in rows),
                "sample_format": _mean(r["sample_format"] for r in rows),  # k samples each: the mean over samples
                "sample_len_mean": _mean(r["sample_len"] for r in rows),
                "samples": k,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
            }
        )
        by_task: dict[str, list[float]] = defaultdict(list)
        for row, p in zip(rows, pass1):
            by_task[str(row["task"])].append(p)
        if len(by_task) > 1:
            metrics["pass@1_by_task"] = {t: _mean(v) for t, v in sorted(by_task.items())}
    return metrics


def _greedy_outputs(rollout, prompt_ids, max_tokens: int, stop_ids) -> list:
    """One temperature-0 answer per prompt (the seed is irrelevant at T 0)."""
    return rollout.generate(
        prompt_ids, Sampling(1, 0.0, 1.0, max_tokens), seeds=[0] * len(prompt_ids), stop_token_ids=stop_ids
    )


def _greedy(rollout, prompt_ids, records, ctx, max_tokens: int, stop_ids, rows: list[dict]) -> None:
    outs = _greedy_outputs(rollout, prompt_ids, max_tokens, stop_ids)
    texts = [g[0].text for g in outs]
    _, parts = score(texts, records, CHECKS, ctx)
    right = correctness(parts)
    for row, text, ok, fmt, out, record in zip(rows, texts, right, parts["format"], outs, records):
        lenient = None if is_code(record) else last_number_correct(text, record["answer"])
        row.update(
            greedy=text,
            greedy_correct=bool(ok),
            greedy_format=float(fmt),
            greedy_len=len(out[0].token_ids),
            lenient=lenient,
        )


def _sampled(rollout, prompt_ids, records, ctx, sampling: Sampling, seeds: list[int], stop_ids, rows) -> None:
    k = sampling.n
    outs = rollout.generate(prompt_ids, sampling, seeds=seeds, stop_token_ids=stop_ids)
    texts = [c.text for g in outs for c in g]
    _, parts = score(texts, [r for r in records for _ in range(k)], CHECKS, ctx)
    accuracy = correctness(parts)
    for i, row in enumerate(rows):
        verdicts = accuracy[i * k : (i + 1) * k]
        keys = [vote_key(t, records[i]) for t in texts[i * k : (i + 1) * k]]
        voted = majority_vote(keys)
        row.update(
            samples_correct=int(sum(verdicts)),
            voted=keys[voted] if voted >= 0 else None,
            cons_correct=bool(voted >= 0 and verdicts[voted] == 1.0),
            sample_format=_mean(parts["format"][i * k : (i + 1) * k]),
            sample_len=_mean(len(c.token_ids) for c in outs[i]),
        )


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def evaluate_model(
    model_path: str,
    benchmarks: dict[str, list[dict]],
    ctx: RewardContext,
    *,
    system_prompt: str,
    sampling: Sampling,
    seed: int,
    greedy: bool = True,
    gpu_memory_utilization: float = 0.8,
    cpu_kv_cache_gb: int = 2,
    rank: int = 0,
    world: int = 1,
):
    """Yield (benchmark, metrics, rows) for each benchmark, with one vLLM engine for the model (one
    per rank on several processes, each generating its share of the prompts)."""
    import time

    import torch
    from transformers import AutoTokenizer

    from pipeline.data.prompts import encode_prompts
    from pipeline.rl.rollout import VLLMRollout

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoded = {name: encode_prompts(tokenizer, records, system_prompt) for name, records in benchmarks.items()}
    max_len = max(len(p) for ids in encoded.values() for p in ids) + sampling.max_tokens
    rollout = VLLMRollout(
        model_path,
        max_model_len=max_len,
        seed=seed,
        dtype="auto" if torch.cuda.is_available() else "float32",
        gpu_memory_utilization=gpu_memory_utilization,
        cpu_kv_cache_gb=cpu_kv_cache_gb,
    )
    try:
        for name, records in benchmarks.items():
            start = time.perf_counter()
            metrics, rows = evaluate_prompts(
                rollout,
                encoded[name],
                records,
                ctx,
                sampling=sampling,
                seed=seed,
                stop_ids=[tokenizer.eos_token_id],
                greedy=greedy,
                rank=rank,
                world=world,
            )
            metrics["seconds"] = time.perf_counter() - start
            yield name, metrics, rows
    finally:
        rollout.close()
