"""vLLM worker extension (`worker_extension_cls="pipeline.vllm_ext.WeightSync"`).

Methods here are mixed into vLLM's worker class and called with `llm.collective_rpc(name, args)`.
"""

from __future__ import annotations

import torch


class WeightSync:
    def load_hf_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Reload the model in place from HF-named tensors; vLLM repacks them (fused qkv, CPU layouts)."""
        device = getattr(self, "device", None)
        it = ((k, v.to(device) if device is not None else v) for k, v in named_tensors)
        self.reload_weights(weights_iterator=it, is_checkpoint_format=True)
        return len(named_tensors)
