"""Stage 3: rejection sampling + SFT (R1 §2.3.3).

Phase 1, generation (streamed, sharded, resumable). Prompts are read lazily from `data` (a
reasoning-gym mixture or a JSONL of any size) in shards of `shard_size` prompts. For each shard,
vLLM samples `samples_per_prompt` responses per prompt from `init_from` (the stage-2 export); the
stage-2 reward registry verifies them (no second copy of answer checking); a generative judge,
when configured, decides answers whose gold is free text (no rule can check it); and `pipeline.data.rejection` applies
R1's readability filters, deduplication and the per-prompt cap. Each shard is written atomically
(`data/shards/shard_NNNNN.jsonl`, then its `.stats.json`, which marks it complete), so a killed
run regenerates only the unfinished shard. With several processes, rank r takes shards r, r+W, ….
Sampling seeds depend on the prompt's global index only, so the output does not depend on where a
run was interrupted.

Phase 2, dataset. Rank 0 concatenates the shards, mixes in general (non-reasoning) chat data at
`general.ratio` rows per reasoning row (never a row marked `held_out`: stage-4 evaluates on those), and
writes a versioned dataset folder `data/dataset/`:
`train.jsonl` (loads with `datasets.load_dataset("json", ...)`), `stats.json` (prompts seen,
samples generated, removals per filter, pass rate per task, length distribution) and
`dataset_info.json` (version = content hash). The manifest names both files.

Phase 3, SFT: the stage-1 trainer (`pipeline.train.sft.train_sft`), from `sft_init_from`: the base model
as in R1, or (the CPU default) the stage-2 export. Resumes from its own checkpoints.

    make stage-3                       # after make stage-2
    make stage-3 ARGS="stage.samples_per_prompt=16 stage.sft_init_from=base data.num_examples=20000"
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from pipeline.data import sources as data_lib
from pipeline.data.code_tasks import is_code
from pipeline.data.prompts import count_prompts, encode_prompts, iter_prompts
from pipeline.data.rejection import ShardStats, select, summarise
from pipeline.rl.judge import Judge
from pipeline.rl.rewards import RewardContext, correctness, score
from pipeline.rl.rollout import Sampling, request_seed
from pipeline.rl.sandbox import sandbox_from
from pipeline.rl.verify import Verifier, is_free_text
from pipeline.run import config as config_lib
from pipeline.run import folders as run_lib
from pipeline.run.errors import run_stage
from pipeline.run.faults import maybe_fault
from pipeline.run.hub import input_path
from pipeline.train import dist as dist_lib
from pipeline.train.metrics import progress_bar
from pipeline.train.sft import train_sft

DATASET_DIR = "dataset"


def shard_path(folder: Path, i: int) -> Path:
    return folder / "data" / "shards" / f"shard_{i:05d}.jsonl"


def shard_done(folder: Path, i: int) -> bool:
    return shard_path(folder, i).with_suffix(".stats.json").exists()


def verdicts(records: list[dict], groups, ctx: RewardContext, judge: Judge | None) -> tuple[list, list, int]:
    """Per-sample correctness (None = nobody could verify it) and format, via the reward registry."""
    texts = [c.text for g in groups for c in g]
    recs = [r for r, g in zip(records, groups) for _ in g]
    _, parts = score(texts, recs, {"accuracy": 1.0, "code": 1.0, "format": 1.0}, ctx)
    correct: list = [bool(x) for x in correctness(parts)]  # code prompts: their tests, in the sandbox
    # a gold answer in words, or one math-verify cannot parse, can only be judged by a model
    math_idx = [
        i
        for i, r in enumerate(records)
        if not is_code(r) and (r.get("task", "math") == "math" or r.get("entry") is None)
    ]
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
        out_c.append(correct[k : k + len(g)])
        out_f.append([bool(x) for x in parts["format"][k : k + len(g)]])
        k += len(g)
    return out_c, out_f, len(to_judge) if judge is not None else 0


@dataclass
class Sampler:
    """What phase 1 samples and verifies with: the vLLM engine, the verifiers and the optional judge."""

    tokenizer: object
    rollout: object  # VLLMRollout
    rewards: RewardContext
    judge: Optional[Judge]
    max_prompt_tokens: int  # a kept sample must fit the SFT rows

    def close(self) -> None:
        self.rewards.verifier.close()
        if self.judge is not None:
            self.judge.close()
        self.rollout.close()


def open_sampler(cfg, dist, model_path: str) -> Sampler:
    from transformers import AutoTokenizer

    from pipeline.rl.rollout import VLLMRollout

    stage = cfg.stage
    max_prompt = stage.pack_length - stage.rollout.max_new_tokens
    if max_prompt <= 0:
        raise config_lib.ConfigError(
            f"config key 'stage.rollout.max_new_tokens': {stage.rollout.max_new_tokens} "
            f"leaves no room for a prompt in stage.pack_length={stage.pack_length}"
        )
    dtype = "auto" if dist.device.type == "cuda" else "float32"
    rollout = VLLMRollout(
        model_path,
        max_model_len=stage.pack_length,
        seed=stage.seed,
        dtype=dtype,
        gpu_memory_utilization=stage.rollout.gpu_memory_utilization,
        cpu_kv_cache_gb=stage.rollout.cpu_kv_cache_gb,
        tensor_parallel_size=stage.rollout.tensor_parallel_size,
    )
    judge = None
    if stage.judge.model:
        judge = Judge(
            str(input_path(stage.judge.model, "stage.judge.model")),
            max_new_tokens=stage.judge.max_new_tokens,
            max_model_len=stage.judge.max_model_len,
            seed=stage.seed,
            dtype=dtype,
        )
    rewards = RewardContext(
        verifier=Verifier(workers=stage.verifier_workers),
        language=stage.language,
        sandbox=sandbox_from(stage.code),
        code_partial_credit=stage.code.partial_credit,
    )
    return Sampler(AutoTokenizer.from_pretrained(model_path), rollout, rewards, judge, max_prompt)


def generate_shards(cfg, dist, model_path: str, folder: Path) -> None:
    """Phase 1 on this rank: every unfinished shard r, r+W, r+2W, …"""
    stage = cfg.stage
    total = count_prompts(cfg.data, "train")
    if stage.max_prompts is not None:
        total = min(total, stage.max_prompts)
    mine = [i for i in range(math.ceil(total / stage.shard_size)) if i % dist.world == dist.rank]
    size = lambda i: min(stage.shard_size, total - i * stage.shard_size)  # noqa: E731
    done_prompts = sum(size(i) for i in mine if shard_done(folder, i))
    my_total = sum(size(i) for i in mine)
    if done_prompts == my_total:
        return
    sampler = open_sampler(cfg, dist, model_path)
    bar = progress_bar(cfg, dist.is_main, my_total, done_prompts, f"{stage.name} sampling", unit="prompt")
    prompts = itertools.islice(iter_prompts(cfg.data, "train"), total)
    for i, shard in enumerate(_batched(prompts, stage.shard_size)):
        if i not in mine or shard_done(folder, i):
            continue
        stats = write_shard(cfg, sampler, shard, i, folder)
        bar.update(len(shard))
        bar.set_postfix(kept=f"{stats['kept']}/{stats['samples']}", tok_s=f"{stats['tok_per_s']:.0f}")
        maybe_fault("after_shard", i + 1)
    bar.close()
    sampler.close()


def write_shard(cfg, sampler: Sampler, shard: list[dict], index: int, folder: Path) -> dict:
    """Sample, verify and filter one shard's prompts; write its rows, then its stats (which mark it done)."""
    stage = cfg.stage
    started = time.perf_counter()
    first_prompt = index * stage.shard_size
    ids = encode_prompts(sampler.tokenizer, shard, cfg.data.system_prompt)
    fits = [j for j, x in enumerate(ids) if len(x) <= sampler.max_prompt_tokens]
    records = [shard[j] for j in fits]
    sampling = Sampling(
        stage.samples_per_prompt, stage.rollout.temperature, stage.rollout.top_p, stage.rollout.max_new_tokens
    )
    groups = sampler.rollout.generate(
        [ids[j] for j in fits],
        sampling,
        seeds=[request_seed(stage.seed, 0, first_prompt + j) for j in fits],
        stop_token_ids=[sampler.tokenizer.eos_token_id],
    )
    gen_seconds = time.perf_counter() - started
    correct, well_formed, judged = verdicts(records, groups, sampler.rewards, sampler.judge)
    rows, stats = select(records, groups, correct, well_formed, stage, stage.language, cfg.data.system_prompt)
    stats.judged = judged
    stats.removed["prompt_too_long"] = len(shard) - len(fits)
    stats.prompts += len(shard) - len(fits)
    path = shard_path(folder, index)
    data_lib.write_jsonl(rows, path)
    maybe_fault("shard_write", index + 1)
    gen_tokens = sum(len(c.token_ids) for g in groups for c in g)
    record = {
        **stats.to_dict(),
        "shard": index,
        "first_prompt": first_prompt,
        "seconds": time.perf_counter() - started,
        "generate_seconds": gen_seconds,
        "tok_per_s": gen_tokens / max(gen_seconds, 1e-9),
    }
    data_lib.write_json(record, path.with_suffix(".stats.json"))
    return record


def _batched(it, n):
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def general_rows(cfg, n_reasoning: int) -> list[dict]:
    """General chat rows at `general.ratio` per reasoning row, sampled with the stage seed; rows marked
    `held_out` (stage-4's held-out general prompts) are left out."""
    g = cfg.stage.general
    if g.source == "none" or g.ratio <= 0 or n_reasoning == 0:
        return []
    dcfg = OmegaConf.structured(
        config_lib.DataConfig(
            source=g.source,
            path=g.path,
            hub_id=g.hub_id,
            split=g.split,
            messages_field=g.messages_field,
            prompt_field=g.prompt_field,
            response_field=g.response_field,
            require_r1_format=False,
            system_prompt=g.system_prompt,
        )
    )
    # rows marked held_out are stage-4's held-out general prompts: never trained on before that eval
    rows = [r for r in data_lib.load_rows(dcfg) if not r.get("held_out")]
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
    stage = cfg.stage
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
        raise data_lib.DataError(
            f"stage-3 kept no samples out of {total.samples} (see {folder / 'data' / 'shards'}): "
            "sample more (stage.samples_per_prompt, data.num_examples) or relax stage.readability"
        )
    digest = data_lib.write_jsonl(rows, out / "train.jsonl")
    stats = summarise(total)
    stats.update(
        shards=len(shards),
        reasoning_rows=len(reasoning),
        general_rows=len(general),
        general_ratio_requested=stage.general.ratio,
        sampling_seconds=seconds,
        rollout_tok_per_s=tokens / max(gen_seconds, 1e-9),
    )
    data_lib.write_json(stats, out / "stats.json")
    info = {
        "version": f"{cfg.run_name}-{stage.name}-{digest[:12]}",
        "sha256": digest,
        "rows": len(rows),
        "files": {"train": "train.jsonl", "stats": "stats.json"},
        "generator": str(stage.init_from),
        "samples_per_prompt": stage.samples_per_prompt,
        "readability": OmegaConf.to_container(stage.readability),
        "general": OmegaConf.to_container(stage.general),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    data_lib.write_json(info, out / "dataset_info.json")
    return info


def load_dataset_rows(folder: Path) -> tuple[list[dict], dict, dict]:
    """The dataset phase 2 wrote, checked against its recorded hash: (rows, dataset_info, stats)."""
    ds_dir = folder / "data" / DATASET_DIR
    info = json.loads((ds_dir / "dataset_info.json").read_text())
    if data_lib.sha256_file(ds_dir / "train.jsonl") != info["sha256"]:
        raise data_lib.DataError(
            f"{ds_dir / 'train.jsonl'} changed since it was written (sha256 mismatch with "
            "dataset_info.json); re-run with force=true to start over"
        )
    return data_lib.read_jsonl(ds_dir / "train.jsonl"), info, json.loads((ds_dir / "stats.json").read_text())


def dataset_outputs(folder: Path) -> dict[str, str]:
    ds_dir = folder / "data" / DATASET_DIR
    return {
        "dataset": str(ds_dir / "train.jsonl"),
        "stats": str(ds_dir / "stats.json"),
        "dataset_info": str(ds_dir / "dataset_info.json"),
    }


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "stage-3 rejection sampling + SFT")
    stage = cfg.stage
    folder = config_lib.stage_dir(cfg)
    dist = dist_lib.init()
    gen_init = run_lib.resolve_init(cfg, "init_from")
    sft_init = run_lib.resolve_init(cfg, "sft_init_from")
    started = time.time()
    if dist.is_main:
        run_lib.start_stage(folder, cfg, generator=gen_init, init=sft_init)
    if not (folder / "data" / DATASET_DIR / "dataset_info.json").exists():
        generate_shards(cfg, dist, gen_init["path"], folder)
        dist.barrier()
        if dist.is_main:
            build_dataset(cfg, folder)
        dist.barrier()
    rows, info, stats = load_dataset_rows(folder)
    if dist.is_main:
        print(
            f"{stage.name} dataset {info['version']}: {stats['reasoning_rows']} reasoning + {stats['general_rows']} "
            f"general rows from {stats['samples_generated']} samples of {stats['prompts_seen']} prompts; "
            f"removed {stats['removed_by_filter']}",
            flush=True,
        )
        run_lib.update_manifest(folder, outputs=dataset_outputs(folder))
    result = train_sft(cfg, dist, sft_init["path"], [{"messages": r["messages"]} for r in rows], folder)
    if dist.is_main:
        summary = {
            "dataset_version": info["version"],
            "rows": info["rows"],
            "kept": stats["kept"],
            "samples_generated": stats["samples_generated"],
            "removed_by_filter": stats["removed_by_filter"],
            "rollout_tok_per_s": stats["rollout_tok_per_s"],
            "sft_steps": result.steps,
            "first_loss": result.first_loss,
            "final_loss": result.final_loss,
            "wall_seconds_this_attempt": time.time() - started,
        }
        run_lib.complete_stage(
            folder,
            summary,
            {**dataset_outputs(folder), **run_lib.model_outputs(folder)},
            headline=f"{info['rows']} rows, SFT loss {result.first_loss:.4f} -> {result.final_loss:.4f}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
