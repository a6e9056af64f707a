"""Time forward+backward+AdamW on the embedded model for one packed row (no DeepSpeed, no I/O).

    .venv/bin/python scripts/bench_sft_step.py --tokens 1024 --steps 4

Used to pick the CPU defaults (pack length, allocator settings) and to report tokens/s.
"""

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from pipeline.run.paths import base_model_dir
from pipeline.train.maths import token_nll_sum

ap = argparse.ArgumentParser()
ap.add_argument("--tokens", type=int, default=1024)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
args = ap.parse_args()

dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
model = AutoModelForCausalLM.from_pretrained(base_model_dir(), dtype=dtype)
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))
for i in range(args.steps + 1):
    t0 = time.perf_counter()
    loss = token_nll_sum(model(input_ids=ids).logits, torch.roll(ids, -1, 1)) / args.tokens
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    if i:  # first step is warm-up
        print(
            f"fwd {t1 - t0:.2f}s bwd {t2 - t1:.2f}s opt {t3 - t2:.2f}s -> {args.tokens / (t3 - t0):.0f} tok/s",
            flush=True,
        )
