"""Weight sync from the trainer to the rollout engine.

`policy_weights` reads the trained policy's HF-named tensors from the DeepSpeed engine (gathered under
ZeRO-3); `VLLMRollout.push_weights` hands them to vLLM, where `WeightSync` (a worker extension,
`worker_extension_cls="pipeline.rl.weight_sync.WeightSync"`, whose methods are mixed into vLLM's
worker and called with `llm.collective_rpc(name, args)`) loads them in place.
"""

from __future__ import annotations

import torch


class WeightSync:
    def load_hf_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Reload the model in place from HF-named tensors; vLLM repacks them (fused qkv, CPU layouts)."""
        device = getattr(self, "device", None)
        it = ((k, v.to(device) if device is not None else v) for k, v in named_tensors)
        self.reload_weights(weights_iterator=it, is_checkpoint_format=True)
        self._repack_tied_lm_head()
        return len(named_tensors)

    def _repack_tied_lm_head(self) -> None:
        """On CPU, vLLM multiplies by a *prepacked copy* of the lm_head weight (`cpu_linear`, made in
        `process_weights_after_loading`). `reload_weights` re-processes only the layers it loaded, and
        a tied lm_head is loaded through `embed_tokens`, so its packed copy kept the old weights: the
        rollout policy drifted from the trained one (mean logprob gap ~3e-3/token after one sync,
        against ~2e-7 before). Re-running the processing rebuilds it from the shared, updated weight."""
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        method = getattr(lm_head, "quant_method", None)
        if lm_head is None or method is None or not hasattr(lm_head, "cpu_linear"):
            return  # GPU, or an untied head that reload_weights processed itself
        if getattr(lm_head, "weight", None) is not None and lm_head.weight.numel() > 0:
            method.process_weights_after_loading(lm_head)


def policy_weights(engine, zero_stage: int):
    """HF-named parameters of the policy (tied weights once), gathered under ZeRO-3; LoRA adapters merged."""
    from pipeline.train import lora

    module = engine.module
    if lora.is_lora(module):
        return lora.gathered_merged_weights(module, zero_stage)
    if zero_stage == 3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return [(n, p.detach().clone()) for n, p in module.named_parameters()]
    return [(n, p.detach()) for n, p in module.named_parameters()]
