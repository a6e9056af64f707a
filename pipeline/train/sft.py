"""The supervised fine-tuning loop shared by stage-1 (cold start), stage-3 and distillation.

Choices, and why:
* **One engine builder** (`pipeline.train.engine.build_engine`): DeepSpeed ZeRO 0-3, AdamW,
  warmup + cosine, resume; the same as the reward-model and RL trainers.
* **Padding-free packing** (see `pipeline.data.packing`): whole examples in rows of `pack_length`
  tokens, block-diagonal attention through reset position ids; no compute spent on padding.
* **Exact token-mean loss**: each micro-batch's NLL *sum* is scaled so the update equals the mean
  over every target token of the global batch (`maths.global_token_mean_scale`).
* **Resume** restores weights, optimizer, scheduler, step and RNG; the data position is the step
  (the data plan is a pure function of the data and the seed), so a resumed run replays the same
  batches and reaches the same final loss as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline.data.packing import Example, build_plan, collate, tokenize_chat
from pipeline.data.sources import DataError
from pipeline.run import faults
from pipeline.run.faults import maybe_fault
from pipeline.train import checkpoint, guards
from pipeline.train.dist import Dist
from pipeline.train.engine import Trainer, build_engine, load_model
from pipeline.train.maths import global_token_mean_scale, token_nll_sum
from pipeline.train.metrics import MetricsLogger, progress_bar
from pipeline.train.state import TrainState


@dataclass
class SFTResult:
    steps: int
    first_loss: float
    final_loss: float
    tokens_per_s: float
    train_seconds: float
    resumed_from: int


@dataclass
class PackedData:
    """Tokenised examples and the fixed plan of packed rows (lists of example indices) per step."""

    examples: list[Example]
    plan: list[list[int]]
    rows_per_micro: int
    rows_per_step: int  # over every micro-step and rank
    total_steps: int
    too_long: int  # examples longer than pack_length, dropped


def tokenize_rows(rows: list[dict], tokenizer) -> list[Example]:
    return [tokenize_chat(tokenizer, r["messages"]) for r in rows]


def plan_data(rows: list[dict], tokenizer, stage: DictConfig, world: int, grad_accum: int) -> PackedData:
    examples = tokenize_rows(rows, tokenizer)
    lengths = [len(e.input_ids) for e in examples]
    plan = build_plan(lengths, stage.pack_length, stage.epochs, stage.seed)
    rows_per_step = stage.micro_batch_rows * grad_accum * world
    total_steps = len(plan) // rows_per_step
    if stage.max_steps is not None:
        total_steps = min(total_steps, stage.max_steps)
    if total_steps == 0:
        raise DataError(
            f"{len(examples)} examples make {len(plan)} packed rows, fewer than one optimizer step needs "
            f"({rows_per_step} = stage.micro_batch_rows {stage.micro_batch_rows} x gradient accumulation "
            f"{grad_accum} x {world} processes); add data or lower stage.gradient_accumulation_steps"
        )
    return PackedData(
        examples, plan, stage.micro_batch_rows, rows_per_step, total_steps, sum(n > stage.pack_length for n in lengths)
    )


def train_sft(cfg: DictConfig, dist: Dist, init_path: str, rows: list[dict], out_dir: Path) -> SFTResult:
    """Train on `rows` (chat rows) from `init_path`; checkpoints and export go under `out_dir`."""
    stage = cfg.stage
    torch.manual_seed(stage.seed)
    model, tokenizer = load_model(init_path, cfg)
    # a resume on a different number of processes keeps the checkpoint's global batch
    grad_accum = checkpoint.resume_grad_accum(out_dir / "checkpoints", stage.gradient_accumulation_steps, dist.world)
    data = plan_data(rows, tokenizer, stage, dist.world, grad_accum)
    trainer = build_engine(
        cfg,
        dist,
        model,
        total_steps=data.total_steps,
        ckpt_dir=out_dir / "checkpoints",
        state_type=TrainState,
        grad_accum=grad_accum,
    )
    start_step = trainer.state.step
    if dist.is_main:
        print(
            f"{stage.name}: {len(data.examples)} examples ({data.too_long} longer than pack_length dropped), "
            f"{len(data.plan)} packed rows, {data.total_steps} steps x {data.rows_per_step} rows, dtype "
            f"{trainer.dtype}, world {dist.world}, zero {cfg.deepspeed.zero_stage}",
            flush=True,
        )
    logger = MetricsLogger(out_dir / "metrics.jsonl", cfg, start_step, enabled=dist.is_main)
    records = train_steps(cfg, dist, trainer, data, logger, out_dir / "checkpoints")
    checkpoint.export_hf(
        trainer.engine, tokenizer, out_dir / "export", dist.rank, cfg.deepspeed.zero_stage, dist.barrier
    )
    logger.close()
    losses = [r["loss"] for r in records]
    if not losses:  # nothing left to train: report the checkpoint's loss
        losses = [trainer.state.loss if trainer.state.loss is not None else float("nan")]
    seconds = sum(r["step_seconds"] for r in records)
    return SFTResult(
        steps=data.total_steps,
        first_loss=losses[0],
        final_loss=losses[-1],
        tokens_per_s=sum(r["tokens"] for r in records) / seconds if seconds else 0.0,
        train_seconds=seconds,
        resumed_from=start_step,
    )


def train_steps(
    cfg: DictConfig, dist: Dist, trainer: Trainer, data: PackedData, logger: MetricsLogger, ckpt_dir: Path
) -> list[dict]:
    """The steps left after resume: train, log, checkpoint. Returns this attempt's step records."""
    stage, engine = cfg.stage, trainer.engine
    bar = progress_bar(cfg, dist.is_main, data.total_steps, trainer.state.step, stage.name)
    records = []
    engine.train()
    for step in range(trainer.state.step, data.total_steps):
        lr = trainer.scheduler.get_last_lr()[0]
        record = {
            "lr": lr,
            **sft_step(engine, data, step, dist, engine.gradient_accumulation_steps(), stage.optim.on_nonfinite),
        }
        records.append(record)
        done = step + 1
        if done % cfg.logger.log_every == 0 or done == data.total_steps:
            epoch = round(step * data.rows_per_step / max(1, len(data.plan)) * stage.epochs, 4)
            logger.log(done, {**record, "epoch": epoch})
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tok_per_s']:.0f}")
        bar.update(1)
        maybe_fault("after_step", done)
        if (stage.save_every and done % stage.save_every == 0) or done == data.total_steps:
            checkpoint.save(
                engine, ckpt_dir, TrainState(step=done, loss=record["loss"]), dist.rank, dist.barrier, stage.keep_last
            )
    bar.close()
    return records


def sft_step(engine, data: PackedData, step: int, dist: Dist, grad_accum: int, on_nonfinite: str = "skip") -> dict:
    """One optimizer step over this rank's share of the step's packed rows; metrics over all ranks."""
    start = time.perf_counter()
    step_rows = data.plan[step * data.rows_per_step : (step + 1) * data.rows_per_step]
    global_targets = sum(data.examples[i].n_targets for row in step_rows for i in row)
    scale = global_token_mean_scale(grad_accum, dist.world, global_targets)
    nll_total, local_tokens, grad_norm, loss_finite, skipped = 0.0, 0, None, True, False
    for micro in range(grad_accum):
        first = (micro * dist.world + dist.rank) * data.rows_per_micro
        batch = collate([data.examples[i] for row in step_rows[first : first + data.rows_per_micro] for i in row])
        batch = {k: v.to(dist.device) for k, v in batch.items()}
        # use_cache=False matters: with a KV cache transformers skips packed-sequence masking
        logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        nll = token_nll_sum(logits, batch["targets"])
        if faults.active("nan_loss", step + 1):
            nll = nll * float("nan")
        loss_finite = loss_finite and guards.finite(nll)
        if loss_finite:
            engine.backward(nll * scale)
        if micro == grad_accum - 1:
            if faults.active("nan_grad", step + 1):
                faults.poison_a_gradient(engine.module)
            grad_norm = _grad_norm(engine)
            skipped = guards.guarded_step(engine, loss_finite, on_nonfinite, f"step {step + 1}")
        else:
            engine.step()  # DeepSpeed only counts the micro-step here
        nll_total += nll.item()
        local_tokens += batch["input_ids"].numel()
    nll_sum, tokens = dist.all_sum(nll_total, local_tokens)
    seconds = time.perf_counter() - start
    grad_norm = engine.get_global_grad_norm() or grad_norm
    return {
        "loss": nll_sum / global_targets,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "tokens": int(tokens),
        "target_tokens": int(global_targets),
        "tok_per_s": tokens / seconds,
        "step_seconds": seconds,
        "nonfinite_skipped": int(skipped),
    }


def _grad_norm(engine):
    """Pre-clip global grad norm where DeepSpeed does not record one (ZeRO-0 without bf16).

    Called after the boundary backward, when the gradients are already averaged over ranks.
    """
    if engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None
