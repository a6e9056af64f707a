"""A generative judge for answers no rule can verify (R1 §2.3.3 used DeepSeek-V3 this way).

The judge model (any HF instruct model, run with vLLM like the rollouts) sees the question, the
reference answer and the response's final answer (never its chain of thought), and must answer with
one word. Greedy decoding; anything but a clear CORRECT counts as incorrect, so a confused judge
removes data rather than admitting wrong answers.
"""

from __future__ import annotations

import re
from typing import Optional

from pipeline.rl.rewards import answer_part
from pipeline.rl.rollout import Sampling

JUDGE_SYSTEM = "You grade answers. Reply with exactly one word: CORRECT or INCORRECT."
JUDGE_TEMPLATE = (
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nCandidate's final answer:\n{answer}\n\n"
    "Does the candidate's final answer agree with the reference answer? Reply CORRECT or INCORRECT."
)
MAX_JUDGED_CHARS = 2000
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT|YES|NO)\b", re.IGNORECASE)


def judge_messages(question: str, reference: str, completion: str) -> list[dict]:
    answer = answer_part(completion).strip()[:MAX_JUDGED_CHARS]
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": JUDGE_TEMPLATE.format(
                question=question[:MAX_JUDGED_CHARS], reference=reference[:MAX_JUDGED_CHARS], answer=answer
            ),
        },
    ]


def parse_verdict(text: str) -> bool:
    """True only when the first verdict word is CORRECT (or YES)."""
    m = _VERDICT.search(text or "")
    return bool(m) and m.group(1).upper() in ("CORRECT", "YES")


class Judge:
    def __init__(
        self,
        model_path: str,
        *,
        max_new_tokens: int,
        max_model_len: int,
        seed: int = 0,
        dtype: str = "auto",
        engine=None,
    ):
        from transformers import AutoTokenizer

        from pipeline.rl.rollout import VLLMRollout

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.engine = engine or VLLMRollout(model_path, max_model_len=max_model_len, seed=seed, dtype=dtype)
        self.max_new_tokens = max_new_tokens
        self.max_prompt = max_model_len - max_new_tokens

    def __call__(self, items: list[tuple[str, str, str]]) -> list[Optional[bool]]:
        """items: (question, reference, completion) -> verdicts (None when the prompt does not fit)."""
        prompts, where = [], []
        for i, (q, ref, c) in enumerate(items):
            ids = self.tokenizer.apply_chat_template(
                judge_messages(q, ref, c), tokenize=True, add_generation_prompt=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            if len(ids) <= self.max_prompt:
                prompts.append(ids)
                where.append(i)
        verdicts: list[Optional[bool]] = [None] * len(items)
        if prompts:
            outs = self.engine.generate(
                prompts,
                Sampling(1, 0.0, 1.0, self.max_new_tokens),
                seeds=[0] * len(prompts),
                stop_token_ids=[self.tokenizer.eos_token_id],
            )
            for i, group in zip(where, outs):
                verdicts[i] = parse_verdict(group[0].text)
        return verdicts

    def close(self) -> None:
        self.engine.close()
