"""Check that one GRPO update moves the policy the right way on a fixed batch (a debugging probe).

Samples 8 prompts x 8 completions with vLLM from MODEL (an HF folder), scores the format reward,
then takes 5 updates on that same batch and prints J = mean(A * mean log pi): it must rise.

    PYTHONPATH=. .venv/bin/python scripts/probe_grpo_direction.py MODEL
"""

import os
import sys

import torch

sys.path.insert(0, "tests")
sys.path.insert(0, ".")
os.environ["DS_ACCELERATOR"] = "cpu"
from conftest import TINY_TASK
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.data.prompts import encode_prompts, load_prompts
from pipeline.rl import maths as grpo
from pipeline.rl.batch import Sample
from pipeline.rl.rewards import RewardContext, score
from pipeline.rl.rollout import Sampling, VLLMRollout
from pipeline.rl.update import packed_logprobs, pad
from pipeline.run.config import compose

if __name__ == "__main__":
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    c = compose(["stage=stage2", "data.num_examples=64"] + TINY_TASK)
    recs = load_prompts(c.data, "train")[:8]
    ids = encode_prompts(tok, recs, c.data.system_prompt)
    eng = VLLMRollout(sys.argv[1], max_model_len=512, seed=0, dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = RewardContext()
    outs = eng.generate(ids, Sampling(8, 1.0, 1.0, 40), seeds=list(range(8)), stop_token_ids=[tok.eos_token_id])
    texts = [c.text for g in outs for c in g]
    tot, parts = score(texts, [r for r in recs for _ in range(8)], {"format": 1.0}, ctx)
    for t, r in list(zip(texts, tot))[:6]:
        print(r, repr(t))
    adv = grpo.group_advantages(torch.tensor(tot), 8)
    samples = [Sample(prompt_ids=ids[g], completion=c, reward=0.0) for g in range(8) for c in outs[g]]
    for x, a in zip(samples, adv.tolist()):
        x.advantage = a
    A = torch.tensor([x.advantage for x in samples])
    for it in range(5):
        lp = packed_logprobs(model, samples, 1.0, torch.device("cpu"), 4096)
        logp = pad(lp)
        lengths = torch.tensor([len(x.completion.token_ids) for x in samples])
        mask = grpo.response_mask(lengths, torch.zeros(len(samples), dtype=torch.bool), logp.size(1), False)
        seqmean = (logp * mask).sum(1) / mask.sum(1)
        print(
            it,
            "J",
            (A * seqmean).mean().item(),
            "pos",
            seqmean[A > 0].mean().item(),
            "neg",
            seqmean[A < 0].mean().item(),
        )
        out = grpo.policy_loss(logp, logp.detach(), A, mask, 0.2, 0.2, aggregation="seq_mean")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    ctx.verifier.close()
