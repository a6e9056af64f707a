"""Stage 2: reasoning-oriented RL with GRPO and rule-based rewards (R1 §2.2-2.3).

Starts from stage-1's export. Per step: sample `group_size` outputs for each of `prompts_per_step`
prompts with vLLM, score them with the rule rewards (accuracy via verifiers, format, language
consistency), turn rewards into group-relative advantages, take `num_minibatches` clipped-surrogate
updates with a k3 KL penalty to a reference model refreshed every `ref_update_every` steps, and push
the new weights into the running vLLM engine in place. The maths is `pipeline.grpo`, the loop
`pipeline.rl`; this module wires them to the run folder, checkpoints and logging.

    make stage-2                      # after make stage-1
    make stage-2 ARGS="stage.group_size=16 stage.aggregation=token_mean stage.eps_high=0.28"
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipeline import checkpoint
from pipeline import config as config_lib
from pipeline import dist as dist_lib
from pipeline import run as run_lib
from pipeline.faults import maybe_fault
from pipeline.maths import warmup_cosine
from pipeline.metrics import MetricsLogger, read_metrics
from pipeline.prompts import encode_prompts, load_prompts
from pipeline.rewards import RewardContext
from pipeline.rl import PromptPool, batch_metrics, collect, evaluate, merge, policy_weights, update
from pipeline.rollout import VLLMRollout
from pipeline.sft import load_model
from pipeline.verify import Verifier


def save_reference(ref_model, folder: Path) -> None:
    """The reference model is part of the RL state: after a refresh it is no longer the init model."""
    if ref_model is not None:
        save_file({k: v.contiguous() for k, v in ref_model.state_dict().items() if k != "lm_head.weight"},
                  folder / "ref.safetensors")


def run_grpo(cfg, dist, init: dict, model, tokenizer, pools: list[PromptPool], ctx: RewardContext,
             eval_records: list[dict], kind: str = "grpo",
             step_hook: Optional[Callable[[int, dict, list[dict]], dict]] = None) -> dict:
    """The RL stage loop (stage-2 and stage-4): rollout -> score -> update -> weight sync, with
    checkpoints, periodic held-out eval and the manifest. `pools` route prompts to their rewards;
    `step_hook(step, metrics, history)` may add metrics (stage-4's reward-hacking watch)."""
    s = cfg.stage
    folder = config_lib.stage_dir(cfg)
    for pool in pools:
        for st in (0, s.steps - 1):
            if pool.per_step(st) % dist.world:
                raise config_lib.ConfigError(f"{pool.name} prompts per step ({pool.per_step(st)}) are not divisible "
                                             f"by the {dist.world} processes")
    dtype = dist_lib.resolve_dtype(cfg.model.dtype, dist.device)
    eval_ids = encode_prompts(tokenizer, eval_records, cfg.data.system_prompt)
    stop_ids = [tokenizer.eos_token_id]
    max_len = max(len(p) for p in [q for pool in pools for q in pool.prompt_ids] + eval_ids) + s.rollout.max_new_tokens

    import deepspeed

    total_updates = s.steps * s.num_minibatches
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=dist_lib.deepspeed_config(cfg, dist.world, dtype == torch.bfloat16, grad_accum=1),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(
            warmup_cosine, warmup_steps=s.warmup_steps, total_steps=total_updates, min_lr_ratio=s.min_lr_ratio)))
    ref_model = None
    if s.beta > 0:
        ref_model = copy.deepcopy(engine.module).eval().requires_grad_(False)

    ckpt_dir = folder / "checkpoints"
    step, ref_step = 0, 0
    cursors = {pool.name: 0 for pool in pools}
    last = checkpoint.latest(ckpt_dir)
    if last is not None:
        state = checkpoint.load(engine, last, dist.rank)
        step, ref_step = int(state["step"]), int(state["ref_step"])
        cursors = {pool.name: int(state[_cursor_key(pool.name)]) for pool in pools}
        if ref_model is not None:
            ref_model.load_state_dict(load_file(last / "ref.safetensors"), strict=False)  # lm_head is tied
        if dist.is_main:
            print(f"resuming {s.name} from {last.name} (step {step}/{s.steps})", flush=True)

    rollout = VLLMRollout(init["path"], max_model_len=max_len, seed=s.seed, dtype="auto" if dist.device.type ==
                          "cuda" else "float32", gpu_memory_utilization=s.rollout.gpu_memory_utilization,
                          cpu_kv_cache_gb=s.rollout.cpu_kv_cache_gb, enable_sleep=s.rollout.sleep_during_training)
    if step > 0:
        rollout.push_weights(policy_weights(engine, cfg.deepspeed.zero_stage))
    if dist.is_main:
        run_lib.update_manifest(folder, stage=s.name, kind=kind, status="running",
                                inputs={"init": init, "prompts": {**{p.name: len(p.records) for p in pools},
                                                                  "eval": len(eval_records)}},
                                config=str(folder / "config.yaml"))
    logger = MetricsLogger(folder / "metrics.jsonl", cfg, step, enabled=dist.is_main)
    history = [r for r in read_metrics(folder / "metrics.jsonl") if r.get("step", 0) <= step] \
        if (folder / "metrics.jsonl").exists() else []
    if step == 0 and dist.is_main and s.eval_every > 0:
        logger.log(0, evaluate(rollout, eval_ids, eval_records, ctx, cfg, stop_ids))
    bar = tqdm(total=s.steps, initial=step, desc=s.name, unit="step", disable=not (dist.is_main and cfg.logger.progress))
    while step < s.steps:
        t0 = time.perf_counter()
        batches = []
        for pool in pools:
            if pool.per_step(step) > 0:
                b, cursors[pool.name] = collect(rollout, pool, cursors[pool.name], step, cfg, ctx, dist.rank,
                                                dist.world, stop_ids)
                batches.append((pool.name, b))
        batch = merge([b for _, b in batches])
        rollout.sleep()
        t1 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        stats = update(engine, ref_model, batch.samples, cfg, dist.device, step)
        t2 = time.perf_counter()
        rollout.push_weights(policy_weights(engine, cfg.deepspeed.zero_stage))
        t3 = time.perf_counter()
        step += 1
        if ref_model is not None and step - ref_step >= s.ref_update_every:
            ref_model.load_state_dict(engine.module.state_dict())
            ref_step = step
        m = batch_metrics(batch, stats)
        gen_tokens = sum(len(x.completion.token_ids) for x in batch.samples)
        m.update(lr=lr, time_generate=batch.gen_seconds, time_score=batch.score_seconds, time_train=t2 - t1,
                 time_sync=t3 - t2, rollout_tok_per_s=gen_tokens / max(batch.gen_seconds, 1e-9),
                 step_seconds=t3 - t0, prompts_drawn=batch.prompts_drawn)
        if len(pools) > 1:
            m.update({f"time_score/{name}": b.score_seconds for name, b in batches})
        if step_hook is not None:
            m.update(step_hook(step, m, history))
        if dist.is_main and s.eval_every > 0 and (step % s.eval_every == 0 or step == s.steps):
            m.update(evaluate(rollout, eval_ids, eval_records, ctx, cfg, stop_ids))
        logger.log(step, m)
        history.append({"step": step, **m})
        bar.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['response_len_mean']:.0f}")
        bar.update(1)
        maybe_fault("after_step", step)
        if step % s.save_every == 0 or step == s.steps:
            checkpoint.save(engine, ckpt_dir, step, {"step": step, "ref_step": ref_step,
                                                     **{_cursor_key(k): v for k, v in cursors.items()}},
                            dist.rank, dist.barrier, s.keep_last,
                            write_extra=functools.partial(save_reference, ref_model))
    bar.close()
    checkpoint.export_hf(engine, tokenizer, folder / "export", dist.rank, cfg.deepspeed.zero_stage, dist.barrier)
    logger.close()
    rollout.close()
    summary: dict = {"steps": step}
    if dist.is_main:
        recs = read_metrics(folder / "metrics.jsonl")
        evals = [r for r in recs if "eval/greedy_accuracy" in r]
        for key in ("greedy_accuracy", "pass@1"):
            if evals and f"eval/{key}" in evals[0]:
                summary[f"eval_{key}_first"] = evals[0][f"eval/{key}"]
                summary[f"eval_{key}_last"] = evals[-1][f"eval/{key}"]
        summary.update({
            "reward_first": next((r["reward"] for r in recs if "reward" in r), None),
            "reward_last": next((r["reward"] for r in reversed(recs) if "reward" in r), None)})
        run_lib.update_manifest(folder, status="complete", summary=summary,
                                outputs={"export": str(folder / "export"), "metrics": str(folder / "metrics.jsonl"),
                                         "checkpoints": str(ckpt_dir)})
        print(f"{s.name} complete: {summary}; export: {folder / 'export'}", flush=True)
    return summary


def _cursor_key(pool: str) -> str:
    return "cursor" if pool == "reasoning" else f"cursor_{pool}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stage-2 GRPO (started by pipeline.launch)")
    ap.add_argument("--config", required=True)
    cfg = config_lib.load(ap.parse_args(argv).config)
    s = cfg.stage
    dist = dist_lib.init()
    init = run_lib.resolve_init(cfg)
    torch.manual_seed(s.seed)
    model, tokenizer = load_model(init["path"], cfg, dist.device)
    records = load_prompts(cfg.data, "train")
    pool = PromptPool("reasoning", records, encode_prompts(tokenizer, records, cfg.data.system_prompt),
                      dict(s.rewards), lambda step: s.prompts_per_step)
    ctx = RewardContext(verifier=Verifier(workers=s.verifier_workers), language=s.language)
    try:
        run_grpo(cfg, dist, init, model, tokenizer, [pool], ctx, load_prompts(cfg.data, "eval"))
    finally:
        ctx.verifier.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
