"""Stage 3: rejection sampling + SFT (R1 §2.3.3).

Phase 1, generation (streamed, sharded, resumable). Prompts are read lazily from `data` (a
reasoning-gym mixture or a JSONL of any size) in shards of `shard_size` prompts. For each shard,
vLLM samples `samples_per_prompt` responses per prompt from `init_from` (the stage-2 export); the
stage-2 reward registry verifies them (no second copy of answer checking); a generative judge,
when configured, decides answers whose gold is free text (no rule can check it); and `pipeline.rejection` applies
R1's readability filters, deduplication and the per-prompt cap. Each shard is written atomically
(`data/shards/shard_NNNNN.jsonl`, then its `.stats.json`, which marks it complete), so a killed
run regenerates only the unfinished shard. With several processes, rank r takes shards r, r+W, ….
Sampling seeds depend on the prompt's global index only, so the output does not depend on where a
run was interrupted.

Phase 2, dataset. Rank 0 concatenates the shards, mixes in general (non-reasoning) chat data at
`general.ratio` rows per reasoning row, and writes a versioned dataset folder `data/dataset/`:
`train.jsonl` (loads with `datasets.load_dataset("json", ...)`), `stats.json` (prompts seen,
samples generated, removals per filter, pass rate per task, length distribution) and
`dataset_info.json` (version = content hash). The manifest names both files.

Phase 3, SFT: the stage-1 trainer (`pipeline.sft.train_sft`), from `sft_init_from`: the base model
as in R1, or (the CPU default) the stage-2 export. Resumes from its own checkpoints.

    make stage-3                       # after make stage-2
    make stage-3 ARGS="stage.samples_per_prompt=16 stage.sft_init_from=base data.num_examples=20000"
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import time
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline import dist as dist_lib
from pipeline import run as run_lib
from pipeline.faults import maybe_fault
from pipeline.judge import Judge
from pipeline.paths import absolute
from pipeline.prompts import count_prompts, encode_prompts, iter_prompts
from pipeline.rejection import ShardStats, select, summarise
from pipeline.rewards import RewardContext, score
from pipeline.rollout import request_seed
from pipeline.sft import train_sft
from pipeline.verify import Verifier, is_free_text

DATASET_DIR = "dataset"


def shard_path(folder: Path, i: int) -> Path:
    return folder / "data" / "shards" / f"shard_{i:05d}.jsonl"


def shard_done(folder: Path, i: int) -> bool:
    return shard_path(folder, i).with_suffix(".stats.json").exists()


def verdicts(records: list[dict], groups, ctx: RewardContext, judge: Judge | None) -> tuple[list, list, int]:
    """Per-sample correctness (None = nobody could verify it) and format, via the reward registry."""
    texts = [c.text for g in groups for c in g]
    recs = [r for r, g in zip(records, groups) for _ in g]
    _, parts = score(texts, recs, {"accuracy": 1.0, "format": 1.0}, ctx)
    correct: list = [bool(x) for x in parts["accuracy"]]
    # a gold answer in words, or one math-verify cannot parse, can only be judged by a model
    math_idx = [i for i, r in enumerate(records) if r.get("task", "math") == "math" or r.get("entry") is None]
    parses = ctx.verifier.check([("gold", (str(records[i]["answer"]),)) for i in math_idx])
    unverifiable = {i for i, ok in zip(math_idx, parses) if not ok or is_free_text(str(records[i]["answer"]))}
    flat_owner = [i for i, g in enumerate(groups) for _ in g]
    to_judge = [j for j, i in enumerate(flat_owner) if i in unverifiable]
    if to_judge and judge is not None:
        judged = judge([(recs[j]["question"], str(recs[j]["answer"]), texts[j]) for j in to_judge])
        for j, v in zip(to_judge, judged):
            correct[j] = v
    else:
        for j in to_judge:
            correct[j] = None
    out_c, out_f, k = [], [], 0
    for g in groups:
        out_c.append(correct[k:k + len(g)])
        out_f.append([bool(x) for x in parts["format"][k:k + len(g)]])
        k += len(g)
    return out_c, out_f, len(to_judge) if judge is not None else 0


def generate_shards(cfg, dist, model_path: str, folder: Path) -> None:
    """Phase 1 on this rank: every unfinished shard r, r+W, r+2W, …"""
    s = cfg.stage
    total = count_prompts(cfg.data, "train")
    if s.max_prompts is not None:
        total = min(total, s.max_prompts)
    n_shards = math.ceil(total / s.shard_size)
    mine = lambda i: i % dist.world == dist.rank  # noqa: E731
    size = lambda i: min(s.shard_size, total - i * s.shard_size)  # noqa: E731
    done_prompts = sum(size(i) for i in range(n_shards) if mine(i) and shard_done(folder, i))
    my_total = sum(size(i) for i in range(n_shards) if mine(i))
    if done_prompts == my_total:
        return
    from transformers import AutoTokenizer

    from pipeline.rollout import VLLMRollout

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    max_prompt = s.pack_length - s.rollout.max_new_tokens  # a kept sample must fit the SFT rows
    if max_prompt <= 0:
        raise config_lib.ConfigError(f"config key 'stage.rollout.max_new_tokens': {s.rollout.max_new_tokens} leaves "
                                     f"no room for a prompt in stage.pack_length={s.pack_length}")
    cuda = dist.device.type == "cuda"
    engine = VLLMRollout(model_path, max_model_len=s.pack_length, seed=s.seed, dtype="auto" if cuda else "float32",
                         gpu_memory_utilization=s.rollout.gpu_memory_utilization,
                         cpu_kv_cache_gb=s.rollout.cpu_kv_cache_gb)
    judge = None
    if s.judge.model:
        judge = Judge(str(absolute(s.judge.model)), max_new_tokens=s.judge.max_new_tokens,
                      max_model_len=s.judge.max_model_len, seed=s.seed, dtype="auto" if cuda else "float32")
    ctx = RewardContext(verifier=Verifier(workers=s.verifier_workers), language=s.language)
    bar = tqdm(total=my_total, initial=done_prompts, desc=f"{s.name} sampling", unit="prompt",
               disable=not cfg.logger.progress or not dist.is_main, dynamic_ncols=True)
    prompts = itertools.islice(iter_prompts(cfg.data, "train"), total)
    for i, shard in enumerate(_batched(prompts, s.shard_size)):
        if not mine(i) or shard_done(folder, i):
            continue
        t0 = time.perf_counter()
        start = i * s.shard_size
        ids = encode_prompts(tokenizer, shard, cfg.data.system_prompt)
        fits = [j for j, x in enumerate(ids) if len(x) <= max_prompt]
        records = [shard[j] for j in fits]
        groups = engine.generate([ids[j] for j in fits], s.samples_per_prompt, temperature=s.rollout.temperature,
                                 top_p=s.rollout.top_p, max_tokens=s.rollout.max_new_tokens,
                                 seeds=[request_seed(s.seed, 0, start + j) for j in fits],
                                 stop_token_ids=[tokenizer.eos_token_id])
        t_gen = time.perf_counter() - t0
        correct, well_formed, judged = verdicts(records, groups, ctx, judge)
        rows, stats = select(records, groups, correct, well_formed, s, s.language, cfg.data.system_prompt)
        stats.judged = judged
        stats.removed["prompt_too_long"] = len(shard) - len(fits)
        stats.prompts += len(shard) - len(fits)
        path = shard_path(folder, i)
        data_lib.write_jsonl(rows, path)
        gen_tokens = sum(len(c.token_ids) for g in groups for c in g)
        data_lib.write_json({**stats.to_dict(), "shard": i, "first_prompt": start, "seconds": time.perf_counter() - t0,
                    "generate_seconds": t_gen, "tok_per_s": gen_tokens / max(t_gen, 1e-9)},
                   path.with_suffix(".stats.json"))
        bar.update(len(shard))
        bar.set_postfix(kept=f"{stats.kept}/{stats.samples}", tok_s=f"{gen_tokens / max(t_gen, 1e-9):.0f}")
        maybe_fault("after_shard", i + 1)
    bar.close()
    ctx.verifier.close()
    if judge is not None:
        judge.close()
    engine.close()


def _batched(it, n):
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def general_rows(cfg, n_reasoning: int) -> list[dict]:
    """General chat rows at `general.ratio` per reasoning row, sampled with the stage seed."""
    g = cfg.stage.general
    if g.source == "none" or g.ratio <= 0 or n_reasoning == 0:
        return []
    dcfg = OmegaConf.structured(config_lib.DataConfig(
        source=g.source, path=g.path, hub_id=g.hub_id, split=g.split, messages_field=g.messages_field,
        prompt_field=g.prompt_field, response_field=g.response_field, require_r1_format=False,
        system_prompt=g.system_prompt))
    rows = data_lib.load_rows(dcfg)
    want = min(len(rows), round(g.ratio * n_reasoning))
    picked = random.Random(cfg.stage.seed).sample(rows, want)
    out = []
    for r in picked:
        messages = [dict(m) for m in r["messages"]]
        if g.empty_think:
            for m in messages:
                if m["role"] == "assistant" and "<think>" not in m["content"]:
                    m["content"] = "<think>\n\n</think>\n\n" + m["content"]
        out.append({"messages": messages, "origin": "general"})
    return out


def build_dataset(cfg, folder: Path) -> dict:
    """Phase 2 (rank 0): shards + general mix -> data/dataset/{train.jsonl, stats.json, dataset_info.json}."""
    s = cfg.stage
    out = folder / "data" / DATASET_DIR
    shards = sorted((folder / "data" / "shards").glob("shard_*.stats.json"))
    total = ShardStats()
    reasoning: list[dict] = []
    seconds = gen_seconds = tokens = 0.0
    for st in shards:
        d = json.loads(st.read_text())
        total.add(ShardStats.from_dict(d))
        seconds += d["seconds"]
        gen_seconds += d["generate_seconds"]
        tokens += d["tok_per_s"] * d["generate_seconds"]
        reasoning += data_lib.read_jsonl(st.with_name(st.name.replace(".stats.json", ".jsonl")))
    general = general_rows(cfg, len(reasoning))
    rows = reasoning + general
    if not rows:
        raise data_lib.DataError(f"stage-3 kept no samples out of {total.samples} (see {folder / 'data' / 'shards'}): "
                                 "sample more (stage.samples_per_prompt, data.num_examples) or relax stage.readability")
    digest = data_lib.write_jsonl(rows, out / "train.jsonl")
    stats = summarise(total)
    stats.update(shards=len(shards), reasoning_rows=len(reasoning), general_rows=len(general),
                 general_ratio_requested=s.general.ratio, sampling_seconds=seconds,
                 rollout_tok_per_s=tokens / max(gen_seconds, 1e-9))
    data_lib.write_json(stats, out / "stats.json")
    info = {"version": f"{cfg.run_name}-{s.name}-{digest[:12]}", "sha256": digest, "rows": len(rows),
            "files": {"train": "train.jsonl", "stats": "stats.json"}, "generator": str(s.init_from),
            "samples_per_prompt": s.samples_per_prompt, "readability": OmegaConf.to_container(s.readability),
            "general": OmegaConf.to_container(s.general), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    data_lib.write_json(info, out / "dataset_info.json")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stage-3 rejection sampling + SFT (started by pipeline.launch)")
    ap.add_argument("--config", required=True)
    cfg = config_lib.load(ap.parse_args(argv).config)
    s = cfg.stage
    folder = config_lib.stage_dir(cfg)
    dist = dist_lib.init()
    gen_init = run_lib.resolve_init(cfg, "init_from")
    sft_init = run_lib.resolve_init(cfg, "sft_init_from")
    t0 = time.time()
    if dist.is_main:
        run_lib.update_manifest(folder, stage=s.name, kind="rs_sft", status="running", config=str(folder / "config.yaml"),
                                inputs={"generator": gen_init, "init": sft_init})
    ds_dir = folder / "data" / DATASET_DIR
    if not (ds_dir / "dataset_info.json").exists():
        generate_shards(cfg, dist, gen_init["path"], folder)
        dist.barrier()
        if dist.is_main:
            build_dataset(cfg, folder)
        dist.barrier()
    info = json.loads((ds_dir / "dataset_info.json").read_text())
    if data_lib.sha256_file(ds_dir / "train.jsonl") != info["sha256"]:
        raise data_lib.DataError(f"{ds_dir / 'train.jsonl'} changed since it was written (sha256 mismatch with "
                                 "dataset_info.json); re-run with force=true to start over")
    stats = json.loads((ds_dir / "stats.json").read_text())
    if dist.is_main:
        print(f"{s.name} dataset {info['version']}: {stats['reasoning_rows']} reasoning + {stats['general_rows']} "
              f"general rows from {stats['samples_generated']} samples of {stats['prompts_seen']} prompts; "
              f"removed {stats['removed_by_filter']}", flush=True)
        run_lib.update_manifest(folder, outputs={"dataset": str(ds_dir / "train.jsonl"), "stats": str(ds_dir / "stats.json"),
                                                 "dataset_info": str(ds_dir / "dataset_info.json")})
    rows = data_lib.read_jsonl(ds_dir / "train.jsonl")
    result = train_sft(cfg, dist, sft_init["path"], [{"messages": r["messages"]} for r in rows], folder)
    if dist.is_main:
        run_lib.update_manifest(
            folder, status="complete",
            outputs={"dataset": str(ds_dir / "train.jsonl"), "stats": str(ds_dir / "stats.json"),
                     "dataset_info": str(ds_dir / "dataset_info.json"), "export": str(folder / "export"),
                     "metrics": str(folder / "metrics.jsonl"), "checkpoints": str(folder / "checkpoints")},
            summary={"dataset_version": info["version"], "rows": info["rows"], "kept": stats["kept"],
                     "samples_generated": stats["samples_generated"], "removed_by_filter": stats["removed_by_filter"],
                     "rollout_tok_per_s": stats["rollout_tok_per_s"], "sft_steps": result.steps,
                     "first_loss": result.first_loss, "final_loss": result.final_loss,
                     "wall_seconds_this_attempt": time.time() - t0})
        print(f"{s.name} complete: {info['rows']} rows, SFT loss {result.first_loss:.4f} -> {result.final_loss:.4f}; "
              f"export: {folder / 'export'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
