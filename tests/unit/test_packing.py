import torch

from pipeline.data.packing import build_plan, collate, pack, tokenize_chat
from pipeline.train.maths import IGNORE, token_nll_sum

CHAT = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "<think>x</think> ok"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "yes"},
]


def test_loss_only_on_assistant_turns(tokenizer):
    ex = tokenize_chat(tokenizer, CHAT)
    assert len(ex.targets) == len(ex.input_ids)
    trained = tokenizer.decode([t for t in ex.targets if t != IGNORE])
    assert trained == "<think>x</think> ok<|im_end|>\nyes<|im_end|>\n"
    # targets are shifted: a trained target at i is the input token at i + 1
    for i, t in enumerate(ex.targets[:-1]):
        assert t in (IGNORE, ex.input_ids[i + 1])


def test_pack_keeps_order_respects_length_and_drops_too_long():
    lengths = [3, 4, 2, 9, 5, 1]
    rows = pack(lengths, [0, 1, 2, 3, 4, 5], pack_length=8)
    assert rows == [[0, 1], [2, 4, 5]]  # 3 (len 9) cannot fit any row
    assert all(sum(lengths[i] for i in r) <= 8 for r in rows)


def test_plan_is_deterministic_and_reshuffles_each_epoch():
    lengths = [10] * 20
    a = build_plan(lengths, 10, epochs=2, seed=3)
    assert a == build_plan(lengths, 10, epochs=2, seed=3)
    first, second = [r[0] for r in a[:20]], [r[0] for r in a[20:]]
    assert sorted(first) == sorted(second) == list(range(20)) and first != second


def test_packed_equals_separate(tiny_model_dir, tokenizer):
    """Padding-free packing must not let examples attend to each other."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    chats = [CHAT, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>4</think> 4"}]]
    exs = [tokenize_chat(tokenizer, c) for c in chats]
    with torch.no_grad():
        separate = sum(
            token_nll_sum(model(input_ids=b["input_ids"]).logits, b["targets"]) for b in (collate([e]) for e in exs)
        )
        b = collate(exs)
        packed = token_nll_sum(
            model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits, b["targets"]
        )
        # without position resets the second example would see the first: a different loss
        leaky = token_nll_sum(model(input_ids=b["input_ids"]).logits, b["targets"])
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-4)
    assert abs(leaky.item() - separate.item()) > 1e-3
