"""The RL loop shared by stage-2 (reasoning RL) and stage-4 (alignment RL), as named phases.

    GRPOTrainer(cfg, dist, init, task).train()
        set-up     model, DeepSpeed engine, reference model, vLLM engine, resume (`__init__`)
        rl_step    rollout -> score -> advantages (`batch.collect`) -> update (`update.update`)
                   -> weight sync into vLLM -> reference refresh; returns the step's metrics
        evaluate   held-out greedy accuracy and pass@1 every `eval_every` steps
        save       a checkpoint every `save_every` steps (weights, optimizer, `RLState`, reference)
        finish     HF export, manifest summary

What is learnt comes from the stage as an `RLTask`: prompt pools routed to reward weights, the
reward context (verifiers, reward models), the held-out prompts, and an optional per-step hook
(stage-4's reward-hacking watch). Determinism for exact resume: prompt cursors and the reference
step are in `RLState`; sampling seeds are hashed from (seed, step, prompt draw index); the trainer's
maths is deterministic on a fixed device and thread count.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from pipeline.data.prompts import encode_prompts
from pipeline.data.sources import read_jsonl, write_jsonl
from pipeline.eval.maths import mcnemar, paired_permutation_test, sign_test
from pipeline.eval.protocol import evaluate_general, evaluate_prompts
from pipeline.rl.batch import PromptPool, collect, merge
from pipeline.rl.maths import k3_kl
from pipeline.rl.metrics import batch_metrics, reduce_over_ranks
from pipeline.rl.rewards import RewardContext
from pipeline.rl.rollout import Sampling, VLLMRollout
from pipeline.rl.state import RLState
from pipeline.rl.update import packed_logprobs, update
from pipeline.rl.weight_sync import policy_weights
from pipeline.run import folders
from pipeline.run.config import ConfigError, stage_dir
from pipeline.run.faults import maybe_fault
from pipeline.train import checkpoint, lora
from pipeline.train.dist import Dist
from pipeline.train.engine import build_engine, load_model
from pipeline.train.metrics import MetricsLogger, progress_bar, read_metrics
from pipeline.train.precision import vllm_dtype

REFERENCE_FILE = "ref.safetensors"
# The tied lm_head shares the embedding's storage: it is not saved twice, and loads back through it.
TIED_KEYS = ("lm_head.weight",)


@dataclass
class RLTask:
    """What an RL stage learns from: prompt pools routed to rewards, and how it is judged."""

    pools: list[PromptPool]
    rewards: RewardContext
    eval_records: list[dict]
    # (step, this step's metrics, earlier steps' metrics) -> extra metrics (stage-4's watch)
    step_hook: Optional[Callable[[int, dict, list[dict]], dict]] = None
    # held-out prompts without a gold answer, scored at every eval by these reward-model rewards (stage-4)
    general_eval: list[dict] = field(default_factory=list)
    general_eval_rewards: list[str] = field(default_factory=list)
    general_eval_samples: int = 0  # sampled answers per general prompt beside the greedy one (their mean scores)


class GRPOTrainer:
    def __init__(self, cfg: DictConfig, dist: Dist, init: dict, task: RLTask):
        self.cfg, self.stage, self.dist, self.init, self.task = cfg, cfg.stage, dist, init, task
        self.folder = stage_dir(cfg)
        self.ckpt_dir = self.folder / "checkpoints"
        self._check_divisible()
        torch.manual_seed(self.stage.seed)
        model, self.tokenizer = load_model(init["path"], cfg)
        self.eval_ids = encode_prompts(self.tokenizer, task.eval_records, cfg.data.system_prompt)
        self.general_eval_ids = encode_prompts(self.tokenizer, task.general_eval, cfg.data.system_prompt)
        self.stop_ids = [self.tokenizer.eos_token_id]
        trainer = build_engine(
            cfg,
            dist,
            model,
            total_steps=self.stage.steps * self.stage.num_minibatches,
            ckpt_dir=self.ckpt_dir,
            state_type=RLState,
        )
        self.engine, self.scheduler, self.state = trainer.engine, trainer.scheduler, trainer.state
        self.dtype = trainer.dtype
        self.state.cursors = self.state.cursors or {pool.name: 0 for pool in task.pools}
        self.reference = self._reference_model(trainer.checkpoint)
        self.rollout = self._rollout_engine()
        if self.state.step > 0:  # vLLM loaded the init weights; the policy has moved since
            self.rollout.push_weights(policy_weights(self.engine, cfg.deepspeed.zero_stage))

    # ---- set-up ----
    def _check_divisible(self) -> None:
        for pool in self.task.pools:
            for step in (0, self.stage.steps - 1):
                if pool.per_step(step) % self.dist.world:
                    raise ConfigError(
                        f"{pool.name} prompts per step ({pool.per_step(step)}) are not divisible "
                        f"by the {self.dist.world} processes"
                    )

    def _reference_model(self, resumed_from: Optional[Path]):
        """The policy's reference for the KL penalty (none at beta = 0). With LoRA it is the base model
        with the adapters off (no copy); otherwise a frozen copy, restored on resume since after a
        refresh it is no longer the init model."""
        if self.stage.beta <= 0:
            return None
        if lora.is_lora(self.engine.module):
            if self.stage.ref_update_every < self.stage.steps:
                raise ConfigError(
                    "config key 'stage.ref_update_every': with model.lora the reference is the base model "
                    "(adapters off) and cannot be refreshed; set it >= stage.steps"
                )
            return lora.AdapterOff(self.engine)
        if self.cfg.deepspeed.zero_stage == 3:  # the engine holds shards: a deep copy would hold empty ones
            reference = load_model(self.init["path"], self.cfg, adapters=False)[0]  # = the policy at step 0
            reference = reference.to(device=self.dist.device, dtype=self.dtype)
        else:
            reference = copy.deepcopy(self.engine.module)
        reference = reference.eval().requires_grad_(False)
        if resumed_from is not None:
            reference.load_state_dict(load_file(resumed_from / REFERENCE_FILE), strict=False)
        return reference

    def _rollout_engine(self) -> VLLMRollout:
        rollout_cfg = self.stage.rollout
        prompt_ids = [q for pool in self.task.pools for q in pool.prompt_ids] + self.eval_ids
        return VLLMRollout(
            self.init["path"],
            max_model_len=max(len(p) for p in prompt_ids) + rollout_cfg.max_new_tokens,
            seed=self.stage.seed,
            dtype=vllm_dtype(self.dtype),  # rollouts compute in the trainer's dtype
            gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
            cpu_kv_cache_gb=rollout_cfg.cpu_kv_cache_gb,
            enable_sleep=rollout_cfg.sleep_during_training,
            sleep_level=rollout_cfg.sleep_level,
            tensor_parallel_size=rollout_cfg.tensor_parallel_size,
        )

    # ---- the loop ----
    def train(self) -> dict:
        dist, stage = self.dist, self.stage
        if dist.is_main:
            folders.start_stage(
                self.folder,
                self.cfg,
                init=self.init,
                prompts={**{p.name: len(p.records) for p in self.task.pools}, "eval": len(self.task.eval_records)},
            )
        logger = MetricsLogger(self.folder / "metrics.jsonl", self.cfg, self.state.step, enabled=dist.is_main)
        history = self._history()
        if self.state.step == 0 and stage.eval_every > 0:  # every rank: the prompts are sharded
            logger.log(0, self.evaluate(0))
        bar = progress_bar(self.cfg, dist.is_main, stage.steps, self.state.step, stage.name)
        while self.state.step < stage.steps:
            metrics = self.rl_step()
            step = self.state.step
            if self.task.step_hook is not None:
                metrics.update(self.task.step_hook(step, metrics, history))
            if stage.eval_every > 0 and (step % stage.eval_every == 0 or step == stage.steps):
                metrics.update(self.evaluate(step))
            logger.log(step, metrics)
            history.append({"step": step, **metrics})
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", len=f"{metrics['response_len_mean']:.0f}")
            bar.update(1)
            maybe_fault("after_step", step)
            if step % stage.save_every == 0 or step == stage.steps:
                self.save()
        bar.close()
        logger.close()
        return self.finish()

    def rl_step(self) -> dict:
        """One RL step: rollouts for every pool, one update on them, weight sync, reference refresh."""
        start = time.perf_counter()
        sleep_wake_before = self.rollout.sleep_wake_seconds
        per_pool = self._generate()
        batch = merge([b for _, b in per_pool])
        maybe_fault("rollout", self.state.step + 1)
        self.rollout.sleep()
        generated = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        measured_kl = self._measured_kl(batch.samples)
        stats = update(self.engine, self.reference, batch.samples, self.cfg, self.dist.device, self.state.step)
        trained = time.perf_counter()
        self.rollout.push_weights(policy_weights(self.engine, self.cfg.deepspeed.zero_stage))
        maybe_fault("weight_sync", self.state.step + 1)
        synced = time.perf_counter()
        self.state.step += 1
        refreshable = isinstance(self.reference, torch.nn.Module)  # the LoRA reference is the base, fixed
        if refreshable and self.state.step - self.state.ref_step >= self.stage.ref_update_every:
            # the policy's weights, gathered under ZeRO-3 (the tied lm_head loads through the embedding)
            weights = dict(policy_weights(self.engine, self.cfg.deepspeed.zero_stage))
            self.reference.load_state_dict(weights, strict=False)
            self.state.ref_step = self.state.step
        metrics = reduce_over_ranks(batch_metrics(batch, stats))
        if self.reference is None:  # no KL term: log one only where it was measured
            metrics.pop("kl")
            if measured_kl is not None:
                metrics["kl"] = measured_kl
        gen_tokens = sum(len(x.completion.token_ids) for x in batch.samples)
        metrics.update(
            lr=lr,
            time_generate=batch.gen_seconds,
            time_score=batch.score_seconds,
            time_train=trained - generated,
            time_sync=synced - trained,
            time_sleep_wake=self.rollout.sleep_wake_seconds - sleep_wake_before,
            rollout_tok_per_s=gen_tokens / max(batch.gen_seconds, 1e-9),
            step_seconds=synced - start,
            prompts_drawn=batch.prompts_drawn,
        )
        if len(self.task.pools) > 1:
            metrics.update({f"time_score/{name}": b.score_seconds for name, b in per_pool})
        return metrics

    def _measured_kl(self, samples: list) -> Optional[float]:
        """At beta = 0 there is no reference model; every `kl_every` steps the init model is loaded for
        one step to measure the k3 KL of the current (pre-update) policy to it on this batch's tokens."""
        every = self.stage.kl_every
        if self.reference is not None or every <= 0 or (self.state.step + 1) % every or not samples:
            return None
        if lora.is_lora(self.engine.module):
            reference = lora.AdapterOff(self.engine)
        else:
            reference = load_model(self.init["path"], self.cfg, adapters=False)[0].to(self.dist.device).eval()
        temperature, row_tokens = self.stage.rollout.temperature, self.stage.max_tokens_per_forward
        with torch.no_grad():
            ref = packed_logprobs(reference, samples, temperature, self.dist.device, row_tokens)
            pol = packed_logprobs(self.engine, samples, temperature, self.dist.device, row_tokens)
        del reference
        total = sum(float(k3_kl(p, r).sum()) for p, r in zip(pol, ref))
        return total / max(1, sum(p.numel() for p in pol))

    def _generate(self) -> list:
        """(pool name, scored batch) for every pool that draws prompts at this step; advances the cursors."""
        per_pool = []
        for pool in self.task.pools:
            if pool.per_step(self.state.step) > 0:
                batch, self.state.cursors[pool.name] = collect(
                    self.rollout,
                    pool,
                    self.state.cursors[pool.name],
                    self.state.step,
                    self.cfg,
                    self.task.rewards,
                    self.dist.rank,
                    self.dist.world,
                    self.stop_ids,
                )
                per_pool.append((pool.name, batch))
        return per_pool

    def evaluate(self, step: int) -> dict:
        """Held-out greedy accuracy (and pass@1 over `eval_samples` samples) with the current weights,
        the prompts sharded over the ranks (every rank gets the same figures); the per-prompt verdicts
        go to eval/step_<step>.jsonl for the paired test at the end."""
        stage = self.stage
        sampling = Sampling(stage.eval_samples, stage.eval_temperature, stage.eval_top_p, stage.rollout.max_new_tokens)
        metrics, rows = evaluate_prompts(
            self.rollout,
            self.eval_ids,
            self.task.eval_records,
            self.task.rewards,
            sampling=sampling,
            seed=stage.seed,
            stop_ids=self.stop_ids,
            rank=self.dist.rank,
            world=self.dist.world,
        )
        if self.dist.is_main:
            write_jsonl(rows, self.folder / "eval" / f"step_{step:05d}.jsonl")
        out = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("n", "samples")}
        tasks = sorted({r["task"] for r in rows if r.get("task")})
        if len(tasks) > 1:
            for task in tasks:
                verdicts = [r["greedy_correct"] for r in rows if r.get("task") == task]
                out[f"eval/greedy_accuracy/{task}"] = sum(verdicts) / len(verdicts)
        if self.task.general_eval:
            general, rows = evaluate_general(
                self.rollout,
                self.general_eval_ids,
                self.task.general_eval,
                self.task.rewards,
                self.task.general_eval_rewards,
                max_tokens=stage.rollout.max_new_tokens,
                stop_ids=self.stop_ids,
                rank=self.dist.rank,
                world=self.dist.world,
                sampling=Sampling(
                    self.task.general_eval_samples,
                    stage.eval_temperature,
                    stage.eval_top_p,
                    stage.rollout.max_new_tokens,
                ),
                seed=stage.seed,
            )
            if self.dist.is_main:
                write_jsonl(rows, self.folder / "eval" / f"general_step_{step:05d}.jsonl")
            out.update({f"eval/{k}": v for k, v in general.items()})
        return out

    def save(self) -> None:
        checkpoint.save(
            self.engine,
            self.ckpt_dir,
            self.state,
            self.dist.rank,
            self.dist.barrier,
            self.stage.keep_last,
            write_extra=functools.partial(_save_reference, self.reference),
        )

    def finish(self) -> dict:
        """Export the policy, close vLLM, and record the stage's summary in its manifest."""
        checkpoint.export_hf(
            self.engine,
            self.tokenizer,
            self.folder / "export",
            self.dist.rank,
            self.cfg.deepspeed.zero_stage,
            self.dist.barrier,
        )
        self.rollout.close()
        summary: dict = {"steps": self.state.step}
        if self.dist.is_main:
            summary.update(_summary(read_metrics(self.folder / "metrics.jsonl")))
            summary.update(heldout_test(self.folder / "eval"))
            folders.complete_stage(self.folder, summary, folders.model_outputs(self.folder))
        return summary

    def _history(self) -> list[dict]:
        path = self.folder / "metrics.jsonl"
        return [r for r in read_metrics(path) if r.get("step", 0) <= self.state.step] if path.exists() else []


def _save_reference(reference, folder: Path) -> None:
    if isinstance(reference, torch.nn.Module):  # not the LoRA reference: that is the base, in the checkpoint
        save_file(
            {k: v.contiguous() for k, v in reference.state_dict().items() if k not in TIED_KEYS},
            folder / REFERENCE_FILE,
        )


def heldout_test(folder: Path) -> dict:
    """McNemar's paired test of the first held-out eval (the init model) against the last one, on the
    verdicts and on the format-free last-number read-out (`heldout_lenient_*`: what R1-Zero from a base
    model that never boxes can show); where general prompts were scored by reward models, a sign test
    of each RM score per prompt too, and a paired permutation test, which weighs how far each moved."""
    files = sorted(folder.glob("step_*.jsonl")) if folder.exists() else []
    if len(files) < 2:
        return {}
    first, last = (read_jsonl(f) for f in (files[0], files[-1]))
    test = mcnemar([r["greedy_correct"] for r in first], [r["greedy_correct"] for r in last])
    out = {f"heldout_{k}": v for k, v in test.items()} | {
        "heldout_test": "mcnemar_exact",
        "heldout_steps": [int(files[0].stem.split("_")[1]), int(files[-1].stem.split("_")[1])],
    }
    pairs = [(a["lenient"], b["lenient"]) for a, b in zip(first, last) if a.get("lenient") is not None]
    if pairs:
        out |= {f"heldout_lenient_{k}": v for k, v in mcnemar(*zip(*pairs)).items()}
    general = sorted(folder.glob("general_step_*.jsonl"))
    if len(general) >= 2:
        first, last = (read_jsonl(f) for f in (general[0], general[-1]))
        out["heldout_rm_test"] = "sign_exact"
        if "clean" in first[0]:  # share of summaries the helpfulness gate lets through to the RM
            out["heldout_general_clean_before"] = sum(r["clean"] for r in first) / len(first)
            out["heldout_general_clean_after"] = sum(r["clean"] for r in last) / len(last)
        for name in (k for k in first[0] if k not in ("id", "greedy", "clean")):
            before, after = [r[name] for r in first], [r[name] for r in last]
            out |= {f"heldout_rm_{name}_{k}": v for k, v in sign_test(before, after).items()}
            out[f"heldout_rm_{name}_permutation_p"] = paired_permutation_test(before, after)
    return out


def _summary(records: list[dict]) -> dict:
    """First and last held-out figures and rewards of the run, for the manifest and `make status`."""
    summary: dict = {}
    evals = [r for r in records if "eval/greedy_accuracy" in r]
    for key in ("greedy_accuracy", "pass@1"):
        if evals and f"eval/{key}" in evals[0]:
            summary[f"eval_{key}_first"] = evals[0][f"eval/{key}"]
            summary[f"eval_{key}_last"] = evals[-1][f"eval/{key}"]
    summary["reward_first"] = next((r["reward"] for r in records if "reward" in r), None)
    summary["reward_last"] = next((r["reward"] for r in reversed(records) if "reward" in r), None)
    return summary
