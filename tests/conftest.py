"""Shared fixtures. The tiny model reuses the real SmolLM2 tokenizer from the setup cache, so
`make setup` (which `make test` runs first) must have prepared the base model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.paths import base_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def base_dir() -> Path:
    d = base_model_dir()
    if not (d / "tokenizer.json").exists():
        pytest.fail(f"base model not prepared at {d}; run `make setup` first", pytrace=False)
    return d


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, base_dir, tokenizer) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer and chat template, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("R1_FAULT", raising=False)
    return os.environ
