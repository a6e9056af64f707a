"""Reward-model training for stage-4 (R1 §2.3.4): `make train-rm`.

R1's final RL stage scores general prompts with reward models: helpfulness (trained on preference
pairs, judged on the final summary only) and harmlessness (judged on the whole response). This stage
trains one such RM on DeepSpeed, from `init_from` (an LM; a fresh 1-logit head is added):

* `objective=pairwise`: Bradley-Terry, -log σ(r_chosen - r_rejected) (`maths.bradley_terry_loss`);
  held-out metric: pairwise accuracy, the share of pairs with r_chosen > r_rejected.
* `objective=pointwise`: BCE of σ(r) against safe = 1 / unsafe = 0 (`maths.pointwise_loss`);
  held-out metric: accuracy of r > 0.

Data: `stage.data_path` (JSONL) or the embedded sets of `pipeline.preferences`, split by prompt.
The batch plan is a pure function of the data and the seed, so resume (weights, optimizer,
scheduler, step) replays exactly the batches an uninterrupted run would. The export is an HF
sequence-classification folder any stage can load by path or by this stage's name.
"""

from __future__ import annotations

import argparse
import functools
import random
import time

import torch
from tqdm import tqdm

from pipeline import checkpoint
from pipeline import config as config_lib
from pipeline import dist as dist_lib
from pipeline import run as run_lib
from pipeline.faults import maybe_fault
from pipeline.maths import bradley_terry_loss, pointwise_loss, warmup_cosine
from pipeline.metrics import MetricsLogger
from pipeline.preferences import load_preferences, split
from pipeline.reward_model import encode, load_rm, score_ids


def encode_rows(rows: list[dict], tokenizer, objective: str, max_length: int) -> list[tuple]:
    if objective == "pairwise":
        return [(encode(tokenizer, r["prompt"], r["chosen"], max_length),
                 encode(tokenizer, r["prompt"], r["rejected"], max_length)) for r in rows]
    return [(encode(tokenizer, r["prompt"], r["response"], max_length), float(bool(r["safe"]))) for r in rows]


def batch_loss(model, items: list[tuple], objective: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-item correctness) for a batch of encoded rows."""
    if objective == "pairwise":
        scores = score_ids(model, [c for c, _ in items] + [r for _, r in items], device)
        chosen, rejected = scores[:len(items)], scores[len(items):]
        return bradley_terry_loss(chosen, rejected), (chosen > rejected).float()
    scores = score_ids(model, [x for x, _ in items], device)
    labels = torch.tensor([y for _, y in items], device=device)
    return pointwise_loss(scores, labels), ((scores > 0).float() == labels).float()


@torch.no_grad()
def heldout_accuracy(model, items: list[tuple], objective: str, device, batch: int = 16) -> float:
    was_training = model.training
    model.eval()
    hits = [batch_loss(model, items[i:i + batch], objective, device)[1] for i in range(0, len(items), batch)]
    model.train(was_training)
    return float(torch.cat(hits).mean()) if hits else float("nan")


def batch_plan(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Seeded per-epoch shuffles cut into full batches (a ragged tail is dropped)."""
    plan = []
    for epoch in range(epochs):
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        plan += [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="reward-model training (started by pipeline.launch)")
    ap.add_argument("--config", required=True)
    cfg = config_lib.load(ap.parse_args(argv).config)
    s = cfg.stage
    folder = config_lib.stage_dir(cfg)
    dist = dist_lib.init()
    init = run_lib.resolve_init(cfg)
    torch.manual_seed(s.seed)
    if s.batch_size % dist.world:
        raise config_lib.ConfigError(f"config key 'stage.batch_size': {s.batch_size} is not divisible by the "
                                     f"{dist.world} processes")
    dtype = dist_lib.resolve_dtype(cfg.model.dtype, dist.device)
    model, tokenizer = load_rm(init["path"], torch.device("cpu"), train=True)
    train_rows, held_rows = split(load_preferences(s.objective, s.data_path, s.seed), s.eval_fraction)
    if len(train_rows) < s.batch_size or not held_rows:
        raise config_lib.ConfigError(f"config key 'stage.eval_fraction': {len(train_rows)} train / {len(held_rows)} "
                                     f"held-out rows; need at least stage.batch_size={s.batch_size} and 1")
    train = encode_rows(train_rows, tokenizer, s.objective, s.max_length)
    held = encode_rows(held_rows, tokenizer, s.objective, s.max_length)
    plan = batch_plan(len(train), s.batch_size, s.epochs, s.seed)
    total = len(plan)

    import deepspeed

    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=dist_lib.deepspeed_config(cfg, dist.world, dtype == torch.bfloat16, grad_accum=1),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(
            warmup_cosine, warmup_steps=s.warmup_steps, total_steps=total, min_lr_ratio=s.min_lr_ratio)))
    ckpt_dir = folder / "checkpoints"
    step = 0
    last = checkpoint.latest(ckpt_dir)
    if last is not None:
        step = int(checkpoint.load(engine, last, dist.rank)["step"])
        if dist.is_main:
            print(f"resuming {s.name} from {last.name} (step {step}/{total})", flush=True)
    if dist.is_main:
        run_lib.update_manifest(folder, stage=s.name, kind="rm", status="running", config=str(folder / "config.yaml"),
                                inputs={"init": init, "data": s.data_path or "embedded", "objective": s.objective,
                                        "train_rows": len(train), "heldout_rows": len(held)})
    logger = MetricsLogger(folder / "metrics.jsonl", cfg, step, enabled=dist.is_main)
    module = engine.module
    if step == 0 and dist.is_main:
        logger.log(0, {"heldout_accuracy": heldout_accuracy(module, held, s.objective, dist.device)})
    per_epoch = max(1, total // s.epochs)
    bar = tqdm(total=total, initial=step, desc=s.name, unit="step", disable=not (dist.is_main and cfg.logger.progress))
    t_start = time.perf_counter()
    while step < total:
        t0 = time.perf_counter()
        idx = plan[step][dist.rank::dist.world]
        loss, hits = batch_loss(module, [train[i] for i in idx], s.objective, dist.device)
        engine.backward(loss)
        engine.step()
        step += 1
        loss_sum, hit_sum = dist.all_sum(loss.item() * len(idx), hits.sum().item())
        m = {"loss": loss_sum / s.batch_size, "train_accuracy": hit_sum / s.batch_size,
             "lr": scheduler.get_last_lr()[0], "step_seconds": time.perf_counter() - t0}
        if dist.is_main and (step % per_epoch == 0 or step == total):
            m["heldout_accuracy"] = heldout_accuracy(module, held, s.objective, dist.device)
        logger.log(step, m)
        bar.set_postfix(loss=f"{m['loss']:.3f}")
        bar.update(1)
        maybe_fault("after_step", step)
        if step % s.save_every == 0 or step == total:
            checkpoint.save(engine, ckpt_dir, step, {"step": step}, dist.rank, dist.barrier, s.keep_last)
    bar.close()
    checkpoint.export_hf(engine, tokenizer, folder / "export", dist.rank, cfg.deepspeed.zero_stage, dist.barrier)
    logger.close()
    if dist.is_main:
        from pipeline.metrics import read_metrics

        evals = [r["heldout_accuracy"] for r in read_metrics(folder / "metrics.jsonl") if "heldout_accuracy" in r]
        summary = {"objective": s.objective, "steps": total, "heldout_rows": len(held),
                   "heldout_accuracy_first": evals[0] if evals else None,
                   "heldout_accuracy_last": evals[-1] if evals else None,
                   "train_seconds_this_attempt": time.perf_counter() - t_start}
        run_lib.update_manifest(folder, status="complete", summary=summary,
                                outputs={"export": str(folder / "export"), "metrics": str(folder / "metrics.jsonl"),
                                         "checkpoints": str(ckpt_dir)})
        print(f"{s.name} complete: {summary}; export: {folder / 'export'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
