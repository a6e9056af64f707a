"""model.dtype=auto: bf16 only on CPUs with native bf16, and only when the calibration shows it faster."""

from __future__ import annotations

import json

import torch

from pipeline.train import precision
from tests.unit.test_rl_update import tiny_llama


def test_native_bf16_needs_amx_or_avx512_bf16():
    assert precision.native_bf16({"avx2", "avx512f", "avx512_bf16"})
    assert precision.native_bf16({"amx_bf16", "amx_tile"})
    assert not precision.native_bf16({"avx2", "avx512f", "avx512bw"})


def test_explicit_dtypes_and_cuda_need_no_calibration():
    cpu = torch.device("cpu")
    assert precision.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert precision.resolve_dtype("fp32", cpu) == torch.float32
    assert precision.resolve_dtype("auto", cpu) == torch.float32  # nothing to calibrate on
    assert precision.vllm_dtype(torch.bfloat16) == "bfloat16" and precision.vllm_dtype(torch.float32) == "float32"


def test_calibration_measures_both_dtypes_on_the_model():
    figures = precision.calibrate(tiny_llama(), tokens=32)
    assert figures["fp32_tok_s"] > 0 and figures["bf16_tok_s"] > 0 and figures["tokens"] == 32


def test_the_cached_calibration_decides_and_is_not_rerun(tmp_path, monkeypatch):
    model = tiny_llama()
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: True)
    key = precision._key(model)
    for fp32, bf16, want in ((200.0, 380.0, torch.bfloat16), (240.0, 4.0, torch.float32)):
        (tmp_path / "precision.json").write_text(json.dumps({key: {"fp32_tok_s": fp32, "bf16_tok_s": bf16}}))
        dtype, figures = precision.cpu_choice(model, tmp_path)
        assert dtype == want and figures["fp32_tok_s"] == fp32


def test_a_cpu_without_native_bf16_stays_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: False)
    dtype, figures = precision.cpu_choice(tiny_llama(), tmp_path)
    assert dtype == torch.float32 and "no native bf16" in figures["reason"]
    assert not (tmp_path / "precision.json").exists()


def test_first_calibration_is_written_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: True)
    monkeypatch.setattr(precision, "CALIBRATION_TOKENS", 16)
    model = tiny_llama()
    dtype, figures = precision.cpu_choice(model, tmp_path)
    cached = json.loads((tmp_path / "precision.json").read_text())[precision._key(model)]
    assert cached["fp32_tok_s"] == figures["fp32_tok_s"]
    assert dtype == (torch.bfloat16 if figures["bf16_tok_s"] > figures["fp32_tok_s"] else torch.float32)
