"""Reward models: any HF sequence-classification checkpoint (one logit) as a scorer of (prompt, response).

* Input: the prompt and response through the model's chat template, as the policy sees them; too
  long a conversation keeps its last `max_length` tokens (the end of the response matters most).
* Score: the classification head on the last token's hidden state. We gather that position
  ourselves from the attention mask instead of relying on `pad_token_id` (which is often unset
  or equal to EOS in decoder checkpoints).
* Batched under `torch.no_grad()` on the trainer's device, in `batch_size` conversations per forward.
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_rm(path: str, device: torch.device, dtype: torch.dtype = torch.float32, train: bool = False):
    """(model, tokenizer) from an HF folder; a causal-LM folder gets a fresh 1-logit head (for training)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    if not hasattr(model, "score") and not train:
        raise ValueError(f"{path}: expected a decoder sequence-classification model with a `score` head")
    return model.to(device).train(train), tokenizer


def encode(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(msgs, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return ids[-max_length:]


def score_ids(model, batch: list[list[int]], device: torch.device) -> torch.Tensor:
    """One logit per sequence (with gradients if the caller has them on); right-padded batch."""
    n = max(len(x) for x in batch)
    ids = torch.zeros(len(batch), n, dtype=torch.long)
    mask = torch.zeros(len(batch), n, dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    ids, mask = ids.to(device), mask.to(device)
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(1) - 1
    h = hidden[torch.arange(len(batch), device=device), last]
    return model.score(h).squeeze(-1).float()


class RewardModel:
    """A frozen RM used as a reward: `rm(prompts, responses) -> list[float]` (raw logits)."""

    def __init__(self, path: str | Path, device: torch.device, max_length: int = 1024, batch_size: int = 16):
        self.model, self.tokenizer = load_rm(str(path), device)
        self.model.requires_grad_(False)
        self.device, self.max_length, self.batch_size = device, max_length, batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        ids = [encode(self.tokenizer, p, r, self.max_length) for p, r in zip(prompts, responses)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        out = [0.0] * len(ids)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, v in zip(chunk, score_ids(self.model, [ids[i] for i in chunk], self.device).tolist()):
                out[i] = v
        return out
