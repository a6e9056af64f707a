"""Which dtype the trainer (and vLLM beside it) computes in: `model.dtype = auto | fp32 | bf16`.

* CUDA: bf16 where the GPU supports it.
* CPU: bf16 only pays where the CPU has native bf16 instructions (AMX or AVX512-BF16); elsewhere
  bf16 matmuls are emulated and run many times slower than fp32. Even with the flags, hosts differ
  (one measured ~4 tok/s in bf16 training, another with AMX 353-388 against 212-215 in fp32), so
  `auto` runs a short calibration: forward + backward of the model itself on one packed row, in fp32
  and in bf16, and keeps the faster. The result is cached per (CPU, torch, model shape) in
  `<cache_dir>/precision.json`, so a host calibrates once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Optional

import torch

CALIBRATION_TOKENS = 256
CALIBRATION_REPS = 2
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    line = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    return line.partition(":")[2].strip() or platform.processor()


def native_bf16(flags: Optional[set[str]] = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def _step_seconds(model, ids: torch.Tensor) -> float:
    best = float("inf")
    for rep in range(CALIBRATION_REPS + 1):  # the first is warm-up
        start = time.perf_counter()
        logits = model(input_ids=ids, use_cache=False).logits
        logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        if rep:
            best = min(best, time.perf_counter() - start)
    return best


def calibrate(model, tokens: Optional[int] = None) -> dict:
    """tok/s of forward + backward on one row of `tokens`, in fp32 and in bf16 (on a bf16 copy)."""
    tokens = tokens or CALIBRATION_TOKENS
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.train()
    fp32 = tokens / _step_seconds(model, ids)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    bf16 = tokens / _step_seconds(bf16_model, ids)
    del bf16_model
    model.train(was_training)
    return {"fp32_tok_s": round(fp32, 1), "bf16_tok_s": round(bf16, 1), "tokens": tokens}


def _key(model) -> str:
    c = model.config
    shape = (c.model_type, c.hidden_size, c.num_hidden_layers, getattr(c, "intermediate_size", 0), c.vocab_size)
    return hashlib.sha256(json.dumps([cpu_name(), torch.__version__, shape]).encode()).hexdigest()[:16]


def cpu_choice(model, cache_dir: Optional[Path]) -> tuple[torch.dtype, dict]:
    """fp32 or bf16 for this CPU and model, by calibration (cached); the figures explain the choice."""
    if not native_bf16():
        return torch.float32, {"reason": "no native bf16 (AMX / AVX512-BF16) on this CPU"}
    path = Path(cache_dir) / "precision.json" if cache_dir else None
    cache = json.loads(path.read_text()) if path and path.exists() else {}
    key = _key(model)
    if key not in cache:
        cache[key] = {**calibrate(model), "cpu": cpu_name(), "torch": torch.__version__}
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            tmp.replace(path)
    figures = cache[key]
    faster = figures["bf16_tok_s"] > figures["fp32_tok_s"]
    return (torch.bfloat16 if faster else torch.float32), figures


def resolve_dtype(name: str, device: torch.device, model=None, cache_dir: Optional[Path] = None) -> torch.dtype:
    """The training dtype for `model.dtype`; `auto` = bf16 on CUDA where supported, and on CPU bf16
    only where the CPU has it natively and the calibration shows it faster (fp32 without a model)."""
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if model is None:
        return torch.float32
    dtype, figures = cpu_choice(model, cache_dir)
    print(f"model.dtype=auto: {dtype} on this CPU ({figures})", flush=True)
    return dtype


def vllm_dtype(dtype: torch.dtype) -> str:
    """vLLM's dtype string for the trainer's dtype: rollouts compute in what the trainer computes in."""
    return "bfloat16" if dtype == torch.bfloat16 else "float32"
