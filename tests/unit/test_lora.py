"""LoRA: merged weights are exactly what peft's own merge gives, under the plain HF names; the reference
with adapters off is the base model."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.run.schema import ModelConfig
from pipeline.train import lora
from tests.unit.test_rl_update import tiny_llama

pytest.importorskip("peft")


def cfg(rank: int = 4, **changes):
    model = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"lora": {"rank": rank, **changes}})
    return OmegaConf.create({"model": model})


def adapted():
    plain = tiny_llama()
    model = lora.apply(copy.deepcopy(plain), cfg())
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (delta 0); give the adapters something to merge
            p.data.normal_(0, 0.05)
    return plain, model


def test_rank_zero_is_full_fine_tuning():
    plain = tiny_llama()
    assert lora.apply(plain, cfg(rank=0)) is plain and not lora.is_lora(plain)


def test_only_adapters_train_and_targets_are_configurable():
    model = lora.apply(tiny_llama(), cfg(target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}


def test_merged_weights_match_peft_merge_under_hf_names():
    plain, model = adapted()
    merged = dict(lora.merged_weights(model))
    reference = copy.deepcopy(model).merge_and_unload()
    expected = dict(reference.named_parameters())
    assert merged.keys() == dict(plain.named_parameters()).keys() == expected.keys()
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    changed = [n for n in merged if not torch.equal(merged[n], dict(plain.named_parameters())[n])]
    assert changed and all(any(t in n for t in ModelConfig().lora.target_modules) for n in changed)
    # merging did not touch the model in place: its base weights are still the plain ones
    base = dict(model.get_base_model().named_parameters())
    q = "model.layers.0.self_attn.q_proj"
    assert torch.equal(base[f"{q}.base_layer.weight"], dict(plain.named_parameters())[f"{q}.weight"])


def test_merged_model_computes_what_the_adapted_model_computes():
    plain, model = adapted()
    plain.load_state_dict(dict(lora.merged_weights(model)), strict=False)
    ids = torch.randint(1, 64, (1, 9))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_adapter_off_is_the_base_model():
    plain, model = adapted()

    class Engine:  # what AdapterOff needs of a DeepSpeed engine
        module = model

        def __call__(self, **kw):
            return model(**kw)

    ids = torch.randint(1, 64, (1, 9))
    with torch.no_grad():
        off = lora.AdapterOff(Engine())(input_ids=ids).logits
        on = model(input_ids=ids).logits
        assert torch.allclose(off, plain(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(on, off, atol=1e-4)
