"""Building the trainer: the model in fp32, then the DeepSpeed engine with its optimizer, warmup/cosine
LR scheduler and, when this stage already has a checkpoint, everything restored from it.

One function serves every training stage (SFT, reward models, RL), so the engine config, the
scheduler and the resume logic exist once.

* **DeepSpeed engine** (ZeRO 0-3 from config) with torch's AdamW (`torch_adam`): no C++ op build.
* **Weights load in fp32**; with bf16 DeepSpeed casts them and keeps fp32 master weights.
* **Warmup + cosine** LR as a LambdaLR handed to DeepSpeed, so its state is checkpointed with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from pipeline.train import checkpoint, lora
from pipeline.train.dist import Dist
from pipeline.train.maths import warmup_cosine
from pipeline.train.precision import resolve_dtype

ADAM_EPS = 1e-8
NEVER = 10**9  # DeepSpeed's own step printing: off


def deepspeed_config(cfg: DictConfig, world: int, bf16: bool, grad_accum: int) -> dict:
    """The DeepSpeed engine config every stage uses; micro-batches are single flattened packed rows."""
    optim, zero_cfg = cfg.stage.optim, cfg.deepspeed
    zero: dict = {"stage": zero_cfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True}
    if zero_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": grad_accum * world,
        "gradient_clipping": optim.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": ADAM_EPS,
                "weight_decay": optim.weight_decay,
                "torch_adam": zero_cfg.torch_adam,
            },
        },
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }


def load_model(path: str, cfg: DictConfig, adapters: bool = True):
    """A causal LM and its tokenizer from an HF folder, in fp32, ready for training (with LoRA adapters
    when `model.lora.rank > 0` and `adapters`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=cfg.model.attn_implementation
    )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return (lora.apply(model, cfg) if adapters else model), tokenizer


def _scheduler(optimizer, optim: DictConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            warmup_cosine, warmup_steps=optim.warmup_steps, total_steps=total_steps, min_lr_ratio=optim.min_lr_ratio
        ),
    )


@dataclass
class Trainer:
    """A DeepSpeed engine ready to train, with where it resumed from."""

    engine: Any  # deepspeed.DeepSpeedEngine
    scheduler: Any  # its LambdaLR
    state: Any  # TrainState / RLState: step 0, or the checkpoint's
    checkpoint: Optional[Path]  # the checkpoint it resumed from, None on a fresh start
    dtype: torch.dtype


def _training_dtype(cfg: DictConfig, dist: Dist, model) -> torch.dtype:
    """`model.dtype`, with `auto`'s CPU calibration run by rank 0 alone (the others read its cached result,
    so every rank computes in the same dtype and the calibration is not slowed by its peers)."""
    if cfg.model.dtype != "auto" or dist.device.type == "cuda":
        return resolve_dtype(cfg.model.dtype, dist.device)
    cache = Path(cfg.cache_dir)
    if dist.is_main:
        dtype = resolve_dtype("auto", dist.device, model, cache)
    dist.barrier()
    if not dist.is_main:
        dtype = resolve_dtype("auto", dist.device, model, cache)
    return dtype


def build_engine(
    cfg: DictConfig, dist: Dist, model, *, total_steps: int, ckpt_dir: Path, state_type: type, grad_accum: int = 1
) -> Trainer:
    """DeepSpeed engine + scheduler for `model`; restored from the newest complete checkpoint in
    `ckpt_dir` if there is one (weights, optimizer, scheduler, `state_type` state and RNG)."""
    import deepspeed

    dtype = _training_dtype(cfg, dist, model)
    last = checkpoint.latest(ckpt_dir)
    zero = cfg.deepspeed.zero_stage
    universal = checkpoint.universal_for(last, dist.world, zero, dist.rank, dist.barrier) if last else None
    ds_config = deepspeed_config(cfg, dist.world, dtype == torch.bfloat16, grad_accum)
    if universal is not None:  # resuming at another world size from the universal copy
        ds_config["checkpoint"] = {"load_universal": True}
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=functools.partial(_scheduler, optim=cfg.stage.optim, total_steps=total_steps),
    )
    state = state_type()
    if last is not None:
        state = checkpoint.load(engine, last, dist.rank, state_type, universal)
        if dist.is_main:
            print(f"resuming {cfg.stage.name} from {last.name} (step {state.step}/{total_steps})", flush=True)
    return Trainer(engine=engine, scheduler=scheduler, state=state, checkpoint=last, dtype=dtype)
