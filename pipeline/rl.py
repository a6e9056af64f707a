"""The GRPO loop shared by the RL stages: rollout -> score -> advantages -> updates -> weight sync.

Each phase is a small function; the maths lives in `pipeline.grpo`, the rewards in
`pipeline.rewards`, generation in `pipeline.rollout`. Determinism for exact resume:
* prompts come from a seeded, epoch-shuffled order read through a cursor (saved in checkpoints);
* every request's sampling seed is derived from (seed, step, prompt draw index);
* the trainer's own maths is deterministic on a fixed device and thread count.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import DictConfig

from pipeline import grpo
from pipeline.evaluate import evaluate_prompts
from pipeline.rewards import RM_REWARDS, RewardContext, score
from pipeline.rollout import Completion, request_seed

REFLECTION_WORDS = ("wait", "verify", "re-check", "recheck", "double-check", "let me check", "mistake",
                    "reconsider", "however", "actually")
_REFLECTION_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def reflection_count(text: str) -> int:
    return len(_REFLECTION_RE.findall(text))


def prompt_index(cursor: int, n: int, seed: int) -> int:
    """The cursor-th prompt of an endless sequence of seeded shuffles of range(n)."""
    epoch, pos = divmod(cursor, n)
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order[pos]


@dataclass
class Sample:
    prompt_ids: list[int]
    completion: Completion
    reward: float
    advantage: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    pool: str = "reasoning"


@dataclass
class Batch:
    samples: list[Sample]
    groups: int
    zero_var_groups: int  # before any refill
    dropped_groups: int  # removed by dynamic sampling
    prompts_drawn: int
    gen_seconds: float
    score_seconds: float


@dataclass
class PromptPool:
    """A prompt set with its own reward weights and schedule (stage-4 routes reasoning and general
    prompts to different rewards); stage-2 has one pool."""

    name: str
    records: list[dict]
    prompt_ids: list[list[int]]
    weights: dict[str, float]
    per_step: Callable[[int], int]  # prompts drawn at a step (over all ranks)
    seed_offset: int = 0  # keeps the pools' sampling seeds and prompt orders apart


def merge(batches: list[Batch]) -> Batch:
    return Batch([x for b in batches for x in b.samples], sum(b.groups for b in batches),
                 sum(b.zero_var_groups for b in batches), sum(b.dropped_groups for b in batches),
                 sum(b.prompts_drawn for b in batches), sum(b.gen_seconds for b in batches),
                 sum(b.score_seconds for b in batches))


def collect(rollout, pool: PromptPool, cursor: int, step: int, cfg: DictConfig, ctx: RewardContext, rank: int,
            world: int, stop_ids: list[int]) -> tuple[Batch, int]:
    """Generate and score `pool`'s groups for one step; with dynamic sampling refill zero-variance groups."""
    s = cfg.stage
    per_rank = pool.per_step(step) // world
    seed = s.seed + pool.seed_offset
    records, prompt_ids = pool.records, pool.prompt_ids
    kept: list[list[Sample]] = []
    zero_var = dropped = drawn = 0
    t_gen = t_score = 0.0
    for round_ in range(s.max_refill_rounds + 1 if s.dynamic_sampling else 1):
        need = per_rank - len(kept)
        if need <= 0:
            break
        # every rank draws the same global prompt positions and takes its own slice
        draws = [cursor + j * world + rank for j in range(need)]
        cursor += need * world
        drawn += need * world
        idx = [prompt_index(d, len(records), seed) for d in draws]
        t0 = time.perf_counter()
        outs = rollout.generate([prompt_ids[i] for i in idx], s.group_size, temperature=s.rollout.temperature,
                                top_p=s.rollout.top_p, max_tokens=s.rollout.max_new_tokens,
                                seeds=[request_seed(seed, step, d) for d in draws], stop_token_ids=stop_ids)
        t1 = time.perf_counter()
        texts = [c.text for group in outs for c in group]
        recs = [records[i] for i in idx for _ in range(s.group_size)]
        total, parts = score(texts, recs, dict(pool.weights), ctx)
        t_score += time.perf_counter() - t1
        t_gen += t1 - t0
        for g, i in enumerate(idx):
            sl = slice(g * s.group_size, (g + 1) * s.group_size)
            group = [Sample(prompt_ids=prompt_ids[i], completion=c, reward=r,
                            parts={k: v[sl][j] for k, v in parts.items()}, pool=pool.name)
                     for j, (c, r) in enumerate(zip(outs[g], total[sl]))]
            rewards = torch.tensor([x.reward for x in group])
            flat = bool(grpo.zero_variance_groups(rewards, s.group_size)[0])
            zero_var += flat and round_ == 0
            if s.dynamic_sampling and flat and round_ < s.max_refill_rounds:
                dropped += 1
                continue
            adv = grpo.group_advantages(rewards, s.group_size, scale_by_std=s.scale_by_std)
            for x, a in zip(group, adv.tolist()):
                x.advantage = a
            kept.append(group)
    samples = [x for g in kept for x in g]
    return Batch(samples, len(kept), zero_var, dropped, drawn, t_gen, t_score), cursor


def pack_rows(samples: list[Sample], max_tokens: int) -> list[list[int]]:
    """Indices of `samples` grouped into packed rows of at most `max_tokens` (a longer sample gets its own row)."""
    rows: list[list[int]] = []
    used = 0
    for i, x in enumerate(samples):
        n = len(x.prompt_ids) + len(x.completion.token_ids)
        if not rows or (used + n > max_tokens and rows[-1]):
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def row_logprobs(model, row: list[Sample], temperature: float, device: torch.device,
                 with_entropy: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample log-probs of the response tokens (and entropies) from one padding-free packed row.

    Logits are computed only at the positions that predict response tokens (`logits_to_keep`), so
    prompt tokens cost a forward pass but no vocabulary projection.
    """
    ids, pos, keep, targets, spans = [], [], [], [], []
    for x in row:
        seq = x.prompt_ids + x.completion.token_ids
        off, p, r = len(ids), len(x.prompt_ids), len(x.completion.token_ids)
        ids += seq
        pos += list(range(len(seq)))
        spans.append((len(keep), r))
        keep += list(range(off + p - 1, off + p + r - 1))
        targets += x.completion.token_ids
    out = model(input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([pos], device=device),
                use_cache=False, logits_to_keep=torch.tensor(keep, device=device))
    logits = out.logits[0]
    lp = grpo.gather_logprobs(logits, torch.tensor(targets, device=device), temperature)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = grpo.token_entropy(logits / temperature)
    logps = [lp[start:start + r] for start, r in spans]
    ents = [ent[start:start + r] for start, r in spans] if ent is not None else []
    return logps, ents


def packed_logprobs(model, samples: list[Sample], temperature: float, device: torch.device,
                    max_tokens: int) -> list[torch.Tensor]:
    """Per-sample response log-probs over packed rows (used without gradients: old and reference policy)."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(samples)
    for row in pack_rows(samples, max_tokens):
        for i, lp in zip(row, row_logprobs(model, [samples[i] for i in row], temperature, device)[0]):
            out[i] = lp
    return out


def pad(seqs: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    clip_frac: float = 0.0
    entropy: float = 0.0
    # mean |log pi_rollout - log pi_trainer| over response tokens, before any update of this step:
    # ~1e-5 when vLLM samples from the policy being trained; it grows if weight sync ever breaks
    rollout_logprob_gap: float = 0.0
    updates: int = 0


def update(engine, ref_model, samples: list[Sample], cfg: DictConfig, device: torch.device, step: int) -> UpdateStats:
    """num_minibatches optimizer steps on one rollout batch.

    Each minibatch is processed one packed row at a time: forward, loss scaled to the row's share of
    the minibatch loss (`grpo.chunk_weight`), backward, and a single optimizer step at the end, so
    memory holds one row's autograd graph, not the minibatch's (32 samples of ~250 tokens held
    ~14 GB on CPU at once, and longer outputs were OOM-killed).
    """
    s = cfg.stage
    temp = s.rollout.temperature
    stats = UpdateStats()
    if not samples:
        return stats
    order = list(range(len(samples)))
    random.Random(s.seed * 7919 + step).shuffle(order)
    chunks = [order[i::s.num_minibatches] for i in range(s.num_minibatches)]
    chunks = [c for c in chunks if c]
    max_len = s.rollout.max_new_tokens
    with torch.no_grad():
        # the policy before any update = the rollout policy (weights were synced), in trainer numerics
        old = packed_logprobs(engine, samples, temp, device, s.max_tokens_per_forward) if len(chunks) > 1 else None
        ref = packed_logprobs(ref_model, samples, temp, device, s.max_tokens_per_forward) \
            if ref_model is not None else None
    gap_sum, gap_n = 0.0, 0
    for chunk in chunks:
        mb = [samples[i] for i in chunk]
        total_tokens = float(sum(len(x.completion.token_ids) for x in mb
                                 if not (s.mask_truncated and x.completion.truncated)))
        rows = pack_rows(mb, s.max_tokens_per_forward)
        loss = kl = clip = ent_sum = 0.0
        ent_n = 0
        for r, row in enumerate(rows):
            engine.set_gradient_accumulation_boundary(r == len(rows) - 1)
            xs = [mb[j] for j in row]
            logp_list, ent_list = row_logprobs(engine, xs, temp, device, with_entropy=True)
            # the pre-update policy: `old`, or (one minibatch, old is None) this forward
            pre = [old[chunk[j]] for j in row] if old is not None else [lp.detach() for lp in logp_list]
            for x, lp in zip(xs, pre):
                if x.completion.logprobs:
                    gap_sum += (torch.tensor(x.completion.logprobs, dtype=lp.dtype, device=lp.device) - lp).abs().sum().item()
                    gap_n += len(x.completion.logprobs)
            logp = pad(logp_list)
            old_logp = pad([old[chunk[j]] for j in row]) if old is not None else logp.detach()
            ref_logp = pad([ref[chunk[j]] for j in row]) if ref is not None else None
            lengths = torch.tensor([len(x.completion.token_ids) for x in xs])
            truncated = torch.tensor([x.completion.truncated for x in xs])
            mask = grpo.response_mask(lengths, truncated, logp.size(1), s.mask_truncated).to(device)
            adv = torch.tensor([x.advantage for x in xs], device=device)
            out = grpo.policy_loss(logp, old_logp, adv, mask, s.eps_low, s.eps_high, beta=s.beta, ref_logp=ref_logp,
                                   aggregation=s.aggregation, max_len=max_len)
            row_tokens = float(mask.sum())
            w = grpo.chunk_weight(s.aggregation, len(xs), len(mb), row_tokens, total_tokens)
            engine.backward(out.loss * w)
            tw = row_tokens / total_tokens if total_tokens > 0 else 0.0
            loss += out.loss.item() * w
            kl += out.kl.item() * tw
            clip += out.clip_frac.item() * tw
            ent_sum += float(sum(e.sum() for e in ent_list))
            ent_n += sum(e.numel() for e in ent_list)
        engine.step()
        stats.loss += loss
        stats.kl += kl
        stats.clip_frac += clip
        stats.entropy += ent_sum / max(1, ent_n)
        stats.updates += 1
    stats.rollout_logprob_gap = gap_sum / max(1, gap_n)
    n = max(1, stats.updates)
    stats.loss, stats.kl, stats.clip_frac, stats.entropy = (stats.loss / n, stats.kl / n, stats.clip_frac / n,
                                                            stats.entropy / n)
    return stats


def policy_weights(engine, zero_stage: int):
    """HF-named parameters of the policy (tied weights once), gathered under ZeRO-3."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return [(n, p.detach().clone()) for n, p in module.named_parameters()]
    return [(n, p.detach()) for n, p in module.named_parameters()]


def batch_metrics(batch: Batch, stats: UpdateStats) -> dict:
    """Per-step metrics; a reward component is averaged over the samples it scored (with routed pools,
    accuracy covers reasoning prompts only and the RM scores general prompts only)."""
    xs = batch.samples
    n = max(1, len(xs))
    lengths = [len(x.completion.token_ids) for x in xs] or [0]
    m = {
        "reward": sum(x.reward for x in xs) / n,
        "response_len_mean": sum(lengths) / n,
        "response_len_max": max(lengths),
        "truncated_frac": sum(x.completion.truncated for x in xs) / n,
        "reflection_per_response": sum(reflection_count(x.completion.text) for x in xs) / n,
        "zero_var_group_frac": batch.zero_var_groups / max(1, batch.groups + batch.dropped_groups),
        "groups": batch.groups,
        "dropped_groups": batch.dropped_groups,
        "loss": stats.loss, "kl": stats.kl, "clip_frac": stats.clip_frac, "entropy": stats.entropy,
        "rollout_logprob_gap": stats.rollout_logprob_gap,
    }
    names = sorted({k for x in xs for k in x.parts})
    for name in names:
        vals = [x.parts[name] for x in xs if name in x.parts]
        m[f"reward/{name}"] = sum(vals) / len(vals)
        if name in RM_REWARDS:  # the RM score distribution, to see it drift or saturate
            mean = m[f"reward/{name}"]
            m[f"reward/{name}_std"] = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
            m[f"reward/{name}_min"], m[f"reward/{name}_max"] = min(vals), max(vals)
    if "accuracy" in names:
        m["accuracy"] = m["reward/accuracy"]
    pools = sorted({x.pool for x in xs})
    if len(pools) > 1 or (pools and pools[0] != "reasoning"):
        for p in pools:
            m[f"samples/{p}"] = sum(x.pool == p for x in xs)
    return m


def evaluate(rollout, prompt_ids: list[list[int]], records: list[dict], ctx: RewardContext, cfg: DictConfig,
             stop_ids: list[int]) -> dict:
    """Held-out greedy accuracy and pass@1 over `eval_samples` samples, with the engine's current weights."""
    s = cfg.stage
    m, _ = evaluate_prompts(rollout, prompt_ids, records, ctx, samples=s.eval_samples, temperature=s.eval_temperature,
                            top_p=s.eval_top_p, max_tokens=s.rollout.max_new_tokens, seed=s.seed, stop_ids=stop_ids)
    return {f"eval/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k not in ("n", "samples")}


def general_prompts_at(step: int, s) -> int:
    """Stage-4 schedule: general prompts (and so preference rewards) only in the last N steps (R1 §2.3.4)."""
    return s.general_prompts_per_step if step >= s.steps - s.general_last_steps else 0


def _slope(ys: list[float]) -> float:
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    den = sum((i - xm) ** 2 for i in range(n))
    return sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / den if den else 0.0


def hacking_watch(history: list[dict], window: int) -> dict:
    """Reward-hacking signals over logged steps: the RM reward rising while rule accuracy falls (least-
    squares slopes over the last `window` steps that have both), and response length against its start."""
    out: dict = {}
    rm_keys = [f"reward/{k}" for k in RM_REWARDS]
    both = [r for r in history if "accuracy" in r and any(k in r for k in rm_keys)]
    if len(both) >= window >= 2:
        recent = both[-window:]
        rm = _slope([sum(r[k] for k in rm_keys if k in r) / sum(k in r for k in rm_keys) for r in recent])
        acc = _slope([r["accuracy"] for r in recent])
        out.update({"watch/rm_slope": rm, "watch/acc_slope": acc, "watch/rm_up_acc_down": float(rm > 0 and acc < 0)})
    lens = [r["response_len_mean"] for r in history if "response_len_mean" in r]
    if len(lens) >= 2 * window:
        ratio = (sum(lens[-window:]) / window) / max(1e-9, sum(lens[:window]) / window)
        out.update({"watch/len_ratio": ratio, "watch/length_collapse": float(ratio < 0.5)})
    return out
