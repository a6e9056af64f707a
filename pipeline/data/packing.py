"""Chat tokenisation with assistant-only loss, and padding-free packing with an exact data plan.

Examples are packed whole into rows of at most `pack_length` tokens. Each example restarts its
`position_ids` at 0; with `attention_mask=None` transformers' sdpa path detects the resets and
builds a block-diagonal causal mask, so packed examples never attend to each other (the test
`test_packed_equals_separate` checks that the loss is the same as running them one by one).

The whole training run is a deterministic *plan*: the list of rows for every epoch, each epoch
shuffled with `seed + epoch`. Step `s` consumes a fixed slice of it, so resuming at step `s` needs
nothing but `s` - the data position is the step counter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from pipeline.data.sources import DataError
from pipeline.train.maths import IGNORE


@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]  # already shifted: targets[i] is the label for predicting token i+1

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE for t in self.targets)


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    except ValueError as e:  # no chat template at all
        raise DataError(f"{tokenizer.name_or_path}: the tokenizer cannot apply a chat template ({e})") from None
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return list(ids)


def tokenize_chat(tokenizer, messages: list[dict]) -> Example:
    """Token ids of the chat-templated conversation; loss on assistant turns only.

    Each assistant turn's span is found by templating the conversation up to that turn with and
    without the turn itself; the span covers the turn's content and its end-of-turn token(s).
    """
    ids = _template(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_template(tokenizer, messages[:i], add_generation_prompt=True))
        if start == len(_template(tokenizer, messages[:i], add_generation_prompt=False)):
            raise DataError(
                f"{tokenizer.name_or_path}: the chat template has no assistant marker (its generation prompt "
                "adds nothing), so the model could not tell where its answer starts; use a chat model's template"
            )
        upto = _template(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if ids[: len(upto)] != upto or start > len(upto):
            raise DataError(
                f"{tokenizer.name_or_path}: the chat template is not prefix-stable; cannot locate assistant tokens"
            )
        labels[start : len(upto)] = ids[start : len(upto)]
    return Example(input_ids=ids, targets=labels[1:] + [IGNORE])


def pack(lengths: list[int], order: list[int], pack_length: int) -> list[list[int]]:
    """Greedy in-order packing of example indices into rows of at most pack_length tokens."""
    rows, row, used = [], [], 0
    for i in order:
        n = lengths[i]
        if n > pack_length:
            continue
        if used + n > pack_length and row:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def build_plan(lengths: list[int], pack_length: int, epochs: int, seed: int) -> list[list[int]]:
    """All packed rows for all epochs, in training order."""
    plan = []
    for epoch in range(epochs):
        order = list(range(len(lengths)))
        random.Random(seed + epoch).shuffle(order)
        plan.extend(pack(lengths, order, pack_length))
    return plan


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Flatten examples into one padding-free row with per-example position ids."""
    ids, tgt, pos = [], [], []
    for ex in examples:
        ids += ex.input_ids
        tgt += ex.targets
        pos += list(range(len(ex.input_ids)))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "targets": torch.tensor([tgt], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
    }
