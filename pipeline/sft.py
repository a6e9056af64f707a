"""The supervised fine-tuning loop shared by stage-1 (cold start), stage-3 and distillation.

Choices, and why:
* **DeepSpeed engine** (ZeRO 0-3 from config) with torch's AdamW (`torch_adam`): no C++ op build.
* **Padding-free packing** (see `pipeline.packing`): whole examples in rows of `pack_length`
  tokens, block-diagonal attention through reset position ids; no compute spent on padding.
* **Exact token-mean loss**: each micro-batch's NLL *sum* is scaled so the update equals the mean
  over every target token of the global batch (`maths.global_token_mean_scale`).
* **Warmup + cosine** LR as a LambdaLR handed to DeepSpeed, so its state is checkpointed with it.
* **Resume** restores weights, optimizer, scheduler, step and RNG; the data position is the step
  (the data plan is a pure function of the data and the seed), so a resumed run replays the same
  batches and reaches the same final loss as an uninterrupted one.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from pipeline import checkpoint
from pipeline.dist import Dist, deepspeed_config, resolve_dtype
from pipeline.faults import maybe_fault
from pipeline.maths import global_token_mean_scale, token_nll_sum, warmup_cosine
from pipeline.metrics import MetricsLogger
from pipeline.packing import Example, build_plan, collate, tokenize_chat


@dataclass
class SFTResult:
    steps: int
    first_loss: float
    final_loss: float
    tokens_per_s: float
    train_seconds: float
    resumed_from: int


def load_model(path: str, cfg: DictConfig, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    # Weights load in fp32; DeepSpeed casts to bf16 itself and keeps fp32 master weights.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return model, tokenizer


def tokenize_rows(rows: list[dict], tokenizer) -> list[Example]:
    return [tokenize_chat(tokenizer, r["messages"]) for r in rows]


def train_sft(cfg: DictConfig, dist: Dist, init_path: str, rows: list[dict], out_dir: Path) -> SFTResult:
    """Train on `rows` (chat rows) from `init_path`; checkpoints and export go under `out_dir`."""
    import deepspeed

    s = cfg.stage
    torch.manual_seed(s.seed)
    dtype = resolve_dtype(cfg.model.dtype, dist.device)
    model, tokenizer = load_model(init_path, cfg, dist.device)

    examples = tokenize_rows(rows, tokenizer)
    lengths = [len(e.input_ids) for e in examples]
    too_long = sum(n > s.pack_length for n in lengths)
    plan = build_plan(lengths, s.pack_length, s.epochs, s.seed)
    bins_per_micro = s.micro_batch_rows
    bins_per_step = bins_per_micro * s.gradient_accumulation_steps * dist.world
    total_steps = len(plan) // bins_per_step
    if s.max_steps is not None:
        total_steps = min(total_steps, s.max_steps)
    if total_steps == 0:
        raise ValueError(f"{len(examples)} examples make {len(plan)} packed rows, fewer than one optimizer "
                         f"step needs ({bins_per_step}); add data or lower stage.gradient_accumulation_steps")

    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, dist.world, dtype == torch.bfloat16, s.gradient_accumulation_steps),
        lr_scheduler=functools.partial(_make_scheduler, warmup=s.warmup_steps, total=total_steps,
                                       min_ratio=s.min_lr_ratio),
    )
    ckpt_dir = out_dir / "checkpoints"
    start_step = 0
    last = checkpoint.latest(ckpt_dir)
    if last is not None:
        state = checkpoint.load(engine, last, dist.rank)
        start_step = int(state["step"])
        if dist.is_main:
            print(f"resuming {s.name} from {last.name} (step {start_step}/{total_steps})", flush=True)

    logger = MetricsLogger(out_dir / "metrics.jsonl", cfg, start_step, enabled=dist.is_main,
                           run_id=_wandb_id(out_dir))
    if dist.is_main:
        print(f"{s.name}: {len(examples)} examples ({too_long} longer than pack_length dropped), "
              f"{len(plan)} packed rows, {total_steps} steps x {bins_per_step} rows, dtype {dtype}, "
              f"world {dist.world}, zero {cfg.deepspeed.zero_stage}", flush=True)
    bar = tqdm(total=total_steps, initial=start_step, desc=s.name, unit="step",
               disable=not (dist.is_main and cfg.logger.progress), dynamic_ncols=True)

    first_loss = final_loss = float("nan")
    tokens_done, t_train = 0, 0.0
    engine.train()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        step_bins = plan[step * bins_per_step : (step + 1) * bins_per_step]
        global_targets = sum(examples[i].n_targets for b in step_bins for i in b)
        scale = global_token_mean_scale(s.gradient_accumulation_steps, dist.world, global_targets)
        lr = scheduler.get_last_lr()[0]
        nll_total, tok_local = 0.0, 0
        for micro in range(s.gradient_accumulation_steps):
            first = (micro * dist.world + dist.rank) * bins_per_micro
            batch = collate([examples[i] for b in step_bins[first : first + bins_per_micro] for i in b])
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            # use_cache=False matters: with a KV cache transformers skips packed-sequence masking
            logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            nll = token_nll_sum(logits, batch["targets"])
            engine.backward(nll * scale)
            if micro == s.gradient_accumulation_steps - 1:
                grad_norm = _grad_norm(engine)
            engine.step()
            nll_total += nll.item()
            tok_local += batch["input_ids"].numel()
        nll_sum, tokens = dist.all_sum(nll_total, tok_local)
        loss = nll_sum / global_targets
        dt = time.perf_counter() - t0
        tokens_done, t_train = tokens_done + tokens, t_train + dt
        first_loss = loss if step == start_step else first_loss
        final_loss = loss
        done = step + 1
        if done % cfg.logger.log_every == 0 or done == total_steps:
            grad_norm = engine.get_global_grad_norm() or grad_norm
            logger.log(done, {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                              "tokens": int(tokens), "target_tokens": int(global_targets),
                              "tok_per_s": tokens / dt, "epoch": _epoch_of(step * bins_per_step, plan, s),
                              "step_seconds": dt})
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / dt:.0f}")
        bar.update(1)
        maybe_fault("after_step", done)
        if (s.save_every and done % s.save_every == 0) or done == total_steps:
            checkpoint.save(engine, ckpt_dir, done, {"step": done, "loss": loss}, dist.rank, dist.barrier,
                            s.keep_last)
    bar.close()
    checkpoint.export_hf(engine, tokenizer, out_dir / "export", dist.rank, cfg.deepspeed.zero_stage, dist.barrier)
    logger.close()
    if start_step == total_steps and dist.is_main:  # nothing left to train: report the checkpoint's loss
        final_loss = float(checkpoint.read_marker(last).get("loss", float("nan"))) if last else final_loss
    return SFTResult(steps=total_steps, first_loss=first_loss, final_loss=final_loss,
                     tokens_per_s=tokens_done / t_train if t_train else 0.0, train_seconds=t_train,
                     resumed_from=start_step)


def _grad_norm(engine):
    """Pre-clip global grad norm where DeepSpeed does not record one (ZeRO-0 without bf16).

    Called after the boundary backward, when the gradients are already averaged over ranks.
    """
    if engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def _make_scheduler(optimizer, warmup: int, total: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_ratio))


def _epoch_of(first_row: int, plan: list, s: DictConfig) -> float:
    return round(first_row / max(1, len(plan)) * s.epochs, 4)


def _wandb_id(out_dir: Path) -> str:
    """Stable per stage folder, so a resumed stage continues the same (offline) wandb run."""
    import hashlib

    return hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12]
