"""Rollout throughput of the vLLM engine the RL stages use, on this machine.

    .venv/bin/python scripts/bench_rollout.py [MODEL] [--batches 32 64 128] [--max-tokens 128]

Samples `n` completions (8 per prompt, temperature 1, like a GRPO step) of held-out arithmetic
prompts and reports generated tokens per second, excluding the engine's start-up. MODEL defaults
to the embedded base model (a stage export works too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from transformers import AutoTokenizer

    from pipeline.data.prompts import encode_prompts, load_prompts
    from pipeline.rl.rollout import Sampling, VLLMRollout
    from pipeline.run.config import compose
    from pipeline.run.paths import base_model_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(base_model_dir()))
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--dtype", default="float32", help="float32 (what the RL stages use on CPU) or bfloat16")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = compose(["stage=stage2", f"data.eval_examples={max(args.batches) // args.group}"])
    prompts = encode_prompts(tok, load_prompts(cfg.data, "eval"), cfg.data.system_prompt)
    engine = VLLMRollout(args.model, max_model_len=1024, seed=0, dtype=args.dtype)
    engine.generate(prompts[:2], Sampling(2, 1.0, 1.0, 16), seeds=[0, 1])  # warm-up
    print(f"model {args.model}, {args.dtype}, max_tokens {args.max_tokens}, {args.group} samples per prompt")
    for n in args.batches:
        p = prompts[: n // args.group]
        t0 = time.perf_counter()
        outs = engine.generate(
            p,
            Sampling(args.group, 1.0, 1.0, args.max_tokens),
            seeds=list(range(len(p))),
            stop_token_ids=[tok.eos_token_id],
        )
        dt = time.perf_counter() - t0
        toks = sum(len(c.token_ids) for g in outs for c in g)
        print(
            f"  {n:4d} sequences: {toks:6d} tokens in {dt:6.1f} s = {toks / dt:6.1f} tok/s "
            f"(mean length {toks / n:.0f})",
            flush=True,
        )
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
