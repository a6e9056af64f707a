"""LoRA adapters (peft) for every training stage: `model.lora.rank > 0`.

* The frozen base weights stay in the model; only the low-rank A/B matrices (and, for a reward model,
  its score head) are trained, so the optimizer state shrinks to the adapters'.
* Everything that leaves the trainer is a plain HF model: `merged_weights` adds scale * B @ A to each
  adapted weight without touching the model in place (merging and unmerging in place would drift the
  base weights by rounding). vLLM receives these merged weights at every sync, and exports are merged
  HF folders, so later stages never see an adapter.
* The RL reference model is the base with the adapters switched off (`AdapterOff`): no second copy
  of the weights exists (beta > 0 used to deep-copy the whole policy).

The LoRA-RL finding ("LoRA without regret", Thinking Machines 2025): rank 1-32 with ~10x the full
fine-tuning learning rate matches full RL fine-tuning, since RL carries few bits per episode.
"""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

ADAPTER = "default"


def enabled(cfg: DictConfig) -> bool:
    return cfg.model.lora.rank > 0


def apply(model, cfg: DictConfig, modules_to_save: Optional[list[str]] = None):
    """Wrap `model` with LoRA adapters as `model.lora` says (a no-op at rank 0)."""
    if not enabled(cfg):
        return model
    from peft import LoraConfig, get_peft_model

    lora = cfg.model.lora
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=modules_to_save,
    )
    if cfg.model.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    return get_peft_model(model, config)


def is_lora(module) -> bool:
    return hasattr(module, "peft_config")


@torch.no_grad()
def merged_weights(module) -> list[tuple[str, torch.Tensor]]:
    """The plain HF model's named parameters, with every adapter merged into its base weight."""
    from peft.tuners.lora import LoraLayer

    hf = module.get_base_model()
    deltas = {name: sub.get_delta_weight(ADAPTER) for name, sub in hf.named_modules() if isinstance(sub, LoraLayer)}
    out = []
    for name, p in hf.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer") and owner[: -len(".base_layer")] in deltas:
            owner = owner[: -len(".base_layer")]
            tensor = p.detach() + deltas[owner].to(p.dtype) if leaf == "weight" else p.detach()
        else:
            tensor = p.detach()
        clean = f"{owner}.{leaf}".replace(f".modules_to_save.{ADAPTER}", "")
        out.append((clean, tensor))
    return out


def gathered_merged_weights(module, zero_stage: int) -> list[tuple[str, torch.Tensor]]:
    """`merged_weights`, with ZeRO-3's partitioned parameters gathered first (every rank takes part)."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return [(n, t.clone()) for n, t in merged_weights(module)]
    return merged_weights(module)


class AdapterOff:
    """Calls the engine with the adapters disabled: the base model, i.e. the RL reference policy."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def module(self):  # the engine's model: `guards.partitioned` looks here for ZeRO-3 shards
        return self.engine.module

    def __call__(self, **kwargs):
        with self.engine.module.disable_adapter():
            return self.engine(**kwargs)

    def eval(self):
        return self
