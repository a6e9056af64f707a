"""Reward-model training for stage-4 (R1 §2.3.4): `make train-rm`.

R1's final RL stage scores general prompts with reward models: helpfulness (trained on preference
pairs, judged on the final summary only) and harmlessness (judged on the whole response). This stage
trains one such RM on DeepSpeed, from `init_from` (an LM; a fresh 1-logit head is added):

* `objective=pairwise`: Bradley-Terry, -log σ(r_chosen - r_rejected) (`maths.bradley_terry_loss`);
  held-out metric: pairwise accuracy, the share of pairs with r_chosen > r_rejected.
* `objective=pointwise`: BCE of σ(r) against safe = 1 / unsafe = 0 (`maths.pointwise_loss`);
  held-out metric: accuracy of r > 0.

Data: `stage.data_path` (JSONL) or the embedded sets of `pipeline.data.preferences`, split by prompt.
The batch plan is a pure function of the data and the seed, so resume (weights, optimizer,
scheduler, step) replays exactly the batches an uninterrupted run would. The export is an HF
sequence-classification folder any stage can load by path or by this stage's name.
"""

from __future__ import annotations

import random
import time

import torch

from pipeline.data.preferences import load_preferences, split
from pipeline.rl.reward_model import encode, load_rm, score_ids
from pipeline.run import config as config_lib
from pipeline.run import faults, folders
from pipeline.run.errors import run_stage
from pipeline.run.faults import maybe_fault
from pipeline.train import checkpoint, guards, lora
from pipeline.train import dist as dist_lib
from pipeline.train.engine import build_engine
from pipeline.train.maths import bradley_terry_loss, pointwise_loss
from pipeline.train.metrics import MetricsLogger, progress_bar, read_metrics
from pipeline.train.state import TrainState


def encode_rows(rows: list[dict], tokenizer, objective: str, max_length: int) -> list[tuple]:
    if objective == "pairwise":
        return [
            (
                encode(tokenizer, r["prompt"], r["chosen"], max_length),
                encode(tokenizer, r["prompt"], r["rejected"], max_length),
            )
            for r in rows
        ]
    return [(encode(tokenizer, r["prompt"], r["response"], max_length), float(bool(r["safe"]))) for r in rows]


def batch_loss(model, items: list[tuple], objective: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-item correctness) for a batch of encoded rows."""
    if objective == "pairwise":
        scores = score_ids(model, [c for c, _ in items] + [r for _, r in items], device)
        chosen, rejected = scores[: len(items)], scores[len(items) :]
        return bradley_terry_loss(chosen, rejected), (chosen > rejected).float()
    scores = score_ids(model, [x for x, _ in items], device)
    labels = torch.tensor([y for _, y in items], device=device)
    return pointwise_loss(scores, labels), ((scores > 0).float() == labels).float()


@torch.no_grad()
def heldout_accuracy(model, items: list[tuple], objective: str, device, batch: int = 16) -> float:
    was_training = model.training
    model.eval()
    hits = [batch_loss(model, items[i : i + batch], objective, device)[1] for i in range(0, len(items), batch)]
    model.train(was_training)
    return float(torch.cat(hits).mean()) if hits else float("nan")


def batch_plan(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Seeded per-epoch shuffles cut into full batches (a ragged tail is dropped)."""
    plan = []
    for epoch in range(epochs):
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        plan += [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return plan


def prepare(cfg, tokenizer) -> tuple[list[tuple], list[tuple]]:
    """Encoded train and held-out rows (the split is by prompt)."""
    stage = cfg.stage
    train_rows, held_rows = split(load_preferences(stage.objective, stage.data_path, stage.seed), stage.eval_fraction)
    if len(train_rows) < stage.batch_size or not held_rows:
        raise config_lib.ConfigError(
            f"config key 'stage.eval_fraction': {len(train_rows)} train / {len(held_rows)} "
            f"held-out rows; need at least stage.batch_size={stage.batch_size} and 1"
        )
    return (
        encode_rows(train_rows, tokenizer, stage.objective, stage.max_length),
        encode_rows(held_rows, tokenizer, stage.objective, stage.max_length),
    )


def rm_step(engine, train: list[tuple], plan: list[list[int]], step: int, stage, dist) -> dict:
    """One optimizer step on this rank's share of the step's batch; loss and accuracy over all ranks."""
    start = time.perf_counter()
    indices = plan[step][dist.rank :: dist.world]
    loss, hits = batch_loss(engine.module, [train[i] for i in indices], stage.objective, dist.device)
    if faults.active("nan_loss", step + 1):
        loss = loss * float("nan")
    loss_finite = guards.finite(loss)
    if loss_finite:
        engine.backward(loss)
    skipped = guards.guarded_step(engine, loss_finite, stage.optim.on_nonfinite, f"step {step + 1}")
    loss_sum, hit_sum = dist.all_sum(loss.item() * len(indices), hits.sum().item())
    return {
        "loss": loss_sum / stage.batch_size,
        "train_accuracy": hit_sum / stage.batch_size,
        "step_seconds": time.perf_counter() - start,
        "nonfinite_skipped": int(skipped),
    }


def train_loop(cfg, dist, trainer, train: list[tuple], held: list[tuple], plan: list[list[int]], logger) -> None:
    """The steps left after resume; held-out accuracy after every epoch; checkpoints every `save_every`."""
    stage, engine, state = cfg.stage, trainer.engine, trainer.state
    steps_per_epoch = max(1, len(plan) // stage.epochs)
    bar = progress_bar(cfg, dist.is_main, len(plan), state.step, stage.name)
    while state.step < len(plan):
        metrics = rm_step(engine, train, plan, state.step, stage, dist)
        metrics["lr"] = trainer.scheduler.get_last_lr()[0]  # after the step, as logged since the first version
        state.step += 1
        if dist.is_main and (state.step % steps_per_epoch == 0 or state.step == len(plan)):
            metrics["heldout_accuracy"] = heldout_accuracy(engine.module, held, stage.objective, dist.device)
        logger.log(state.step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        bar.update(1)
        maybe_fault("after_step", state.step)
        if state.step % stage.save_every == 0 or state.step == len(plan):
            checkpoint.save(
                engine, config_lib.stage_dir(cfg) / "checkpoints", state, dist.rank, dist.barrier, stage.keep_last
            )
    bar.close()


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "reward-model training")
    stage = cfg.stage
    folder = config_lib.stage_dir(cfg)
    dist = dist_lib.init()
    init = folders.resolve_init(cfg)
    torch.manual_seed(stage.seed)
    if stage.batch_size % dist.world:
        raise config_lib.ConfigError(
            f"config key 'stage.batch_size': {stage.batch_size} is not divisible by the {dist.world} processes"
        )
    model, tokenizer = load_rm(init["path"], torch.device("cpu"), train=True)
    model = lora.apply(model, cfg, modules_to_save=["score"])  # model.lora.rank > 0: adapters + a trained head
    train, held = prepare(cfg, tokenizer)
    plan = batch_plan(len(train), stage.batch_size, stage.epochs, stage.seed)
    trainer = build_engine(
        cfg, dist, model, total_steps=len(plan), ckpt_dir=folder / "checkpoints", state_type=TrainState
    )
    if dist.is_main:
        folders.start_stage(
            folder,
            cfg,
            init=init,
            data=stage.data_path or "embedded",
            objective=stage.objective,
            train_rows=len(train),
            heldout_rows=len(held),
        )
    logger = MetricsLogger(folder / "metrics.jsonl", cfg, trainer.state.step, enabled=dist.is_main)
    if trainer.state.step == 0 and dist.is_main:
        logger.log(0, {"heldout_accuracy": heldout_accuracy(trainer.engine.module, held, stage.objective, dist.device)})
    started = time.perf_counter()
    train_loop(cfg, dist, trainer, train, held, plan, logger)
    checkpoint.export_hf(
        trainer.engine, tokenizer, folder / "export", dist.rank, cfg.deepspeed.zero_stage, dist.barrier
    )
    logger.close()
    if dist.is_main:
        evals = [r["heldout_accuracy"] for r in read_metrics(folder / "metrics.jsonl") if "heldout_accuracy" in r]
        summary = {
            "objective": stage.objective,
            "steps": len(plan),
            "heldout_rows": len(held),
            "heldout_accuracy_first": evals[0] if evals else None,
            "heldout_accuracy_last": evals[-1] if evals else None,
            "train_seconds_this_attempt": time.perf_counter() - started,
        }
        folders.complete_stage(folder, summary, folders.model_outputs(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
