"""The GRPO update on a real (tiny, random) Llama: skipping zero-gradient samples changes nothing but cost."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.rl.batch import Sample
from pipeline.rl.maths import group_advantages
from pipeline.rl.rollout import Completion
from pipeline.rl.update import contributes, update
from pipeline.run.schema import GRPOStageConfig


class RecordingEngine:
    """What `update` needs of a DeepSpeed engine; `step` records the accumulated gradient."""

    def __init__(self, module):
        self.module = module
        self.steps: list[dict[str, torch.Tensor]] = []
        self.step_lrs: list[float] = []
        self.forwards = 0
        self.optimizer = SimpleNamespace(param_groups=[{"lr": 1e-3}])

    def __call__(self, **kwargs):
        if torch.is_grad_enabled():
            self.forwards += 1
        return self.module(**kwargs)

    def backward(self, loss):
        loss.backward()

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        pass

    def step(self):
        self.steps.append({n: p.grad.clone() for n, p in self.module.named_parameters() if p.grad is not None})
        self.step_lrs.append(self.optimizer.param_groups[0]["lr"])
        self.optimizer.param_groups[0]["lr"] = 1e-3  # as the LR scheduler would set it again
        self.module.zero_grad(set_to_none=True)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).float()


def samples(group_rewards: list[list[float]], truncate: set[int] = frozenset()) -> list[Sample]:
    """One sample per reward, random tokens; groups are contiguous, advantages as GRPO computes them."""
    gen = torch.Generator().manual_seed(1)
    rewards = torch.tensor([r for g in group_rewards for r in g])
    adv = group_advantages(rewards, len(group_rewards[0]), std_floor=0.1)
    out = []
    for i, (r, a) in enumerate(zip(rewards.tolist(), adv.tolist())):
        n = 3 + i % 5
        tokens = torch.randint(1, 64, (n,), generator=gen).tolist()
        completion = Completion(tokens, [-1.0] * n, "", truncated=i in truncate)
        prompt = torch.randint(1, 64, (4,), generator=gen).tolist()
        out.append(Sample(prompt, completion, reward=r, advantage=a))
    return out


def stage(**changes):
    base = OmegaConf.structured(GRPOStageConfig)
    base.max_tokens_per_forward = 24  # several packed rows
    base.beta = 0.0
    return OmegaConf.merge(base, changes)


def grads(batch, skip: bool, **changes):
    engine = RecordingEngine(tiny_llama())
    cfg = OmegaConf.create({"stage": stage(skip_zero_grad=skip, **changes)})
    stats = update(engine, None, batch, cfg, torch.device("cpu"), step=0)
    return engine, stats


# group 1 flat (zero advantage), group 2 informative, group 3 informative with one truncated sample
GROUPS = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean", "dr_grpo"])
@pytest.mark.parametrize("num_minibatches", [1, 2])
def test_skipping_zero_gradient_samples_leaves_the_gradient_unchanged(aggregation, num_minibatches):
    batch = samples(GROUPS, truncate={9})
    assert [contributes(x, stage()) for x in batch] == [False] * 4 + [True] * 5 + [False] + [True] * 2
    full, full_stats = grads(batch, skip=False, aggregation=aggregation, num_minibatches=num_minibatches)
    skipped, skip_stats = grads(batch, skip=True, aggregation=aggregation, num_minibatches=num_minibatches)
    assert len(full.steps) == len(skipped.steps) == num_minibatches
    for a, b in zip(full.steps, skipped.steps):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-7, rtol=1e-5), name
        assert sum(float(g.abs().sum()) for g in a.values()) > 0  # the test compares real gradients
    assert skip_stats.loss == pytest.approx(full_stats.loss, abs=1e-6)
    assert skip_stats.clip_frac == pytest.approx(full_stats.clip_frac, abs=1e-6)
    assert skip_stats.trained_frac == pytest.approx(7 / 12) and full_stats.trained_frac == 1.0


def test_skipping_saves_the_forward_passes():
    batch = samples(GROUPS, truncate={9})
    full, _ = grads(batch, skip=False)
    skipped, _ = grads(batch, skip=True)
    assert skipped.forwards < full.forwards


def test_a_batch_with_no_signal_still_steps_on_zero_gradients():
    batch = samples([[1.0, 1.0], [0.0, 0.0]])
    engine, stats = grads(batch, skip=True)
    assert engine.forwards == 0 and len(engine.steps) == 1
    assert all(float(g.abs().sum()) == 0.0 for g in engine.steps[0].values())
    assert len(engine.steps[0]) == len(list(engine.module.parameters()))  # every parameter has a (zero) grad
    assert stats.trained_frac == 0.0


def test_with_a_kl_term_zero_advantage_samples_are_trained():
    batch = samples(GROUPS)
    assert all(contributes(x, stage(beta=0.01)) for x in batch)


def test_tis_weights_are_logged_and_one_when_rollout_and_trainer_agree():
    batch = samples(GROUPS)
    model = tiny_llama()
    with torch.no_grad():  # give every completion the trainer's own log-probs, as exact weight sync would
        from pipeline.rl.update import packed_logprobs

        lps = packed_logprobs(model, batch, 1.0, torch.device("cpu"), 24)
    for x, lp in zip(batch, lps):
        x.completion.logprobs = lp.tolist()
    _, stats = grads(batch, skip=True)
    assert stats.tis_weight_mean == pytest.approx(1.0, abs=1e-5) and stats.tis_capped_frac == 0.0
    for x in batch:  # a rollout that thought its tokens far less likely: weights hit the cap
        x.completion.logprobs = [v - 5.0 for v in x.completion.logprobs]
    _, stats = grads(batch, skip=True)
    assert stats.tis_weight_mean == pytest.approx(2.0) and stats.tis_capped_frac == 1.0
    assert math.isfinite(stats.loss)


def test_a_nan_loss_skips_the_update_or_stops_the_run():
    from pipeline.train.guards import NonFiniteError

    batch = samples(GROUPS)
    batch[5].advantage = float("nan")
    engine, stats = grads(batch, skip=True)
    assert stats.nonfinite_skipped == 1 and engine.step_lrs == [0.0]  # stepped at lr 0: weights unchanged
    assert all(float(g.abs().sum()) == 0.0 for g in engine.steps[0].values())
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient"):
        grads(batch, skip=True, optim={"on_nonfinite": "stop"})


def test_a_nan_gradient_skips_the_update(monkeypatch):
    batch = samples(GROUPS)
    monkeypatch.setenv("R1_FAULT", "nan_grad:1")  # the fault point poisons a gradient after the backward
    engine, stats = grads(batch, skip=True)
    assert stats.nonfinite_skipped == 1 and engine.step_lrs == [0.0]
    monkeypatch.delenv("R1_FAULT")
    engine, stats = grads(batch, skip=True)
    assert stats.nonfinite_skipped == 0 and engine.step_lrs == [1e-3]


def test_a_nan_reward_gives_its_group_no_advantage_or_stops_the_run():
    from pipeline.rl.batch import _neutralise_nonfinite
    from pipeline.train.guards import NonFiniteError

    group = samples([[1.0, 0.0, 1.0, 0.0]])
    group[1].reward, group[1].parts = float("nan"), {"helpfulness": float("nan"), "format": 1.0}
    assert _neutralise_nonfinite(group, "skip", step=0) == 1
    assert [x.reward for x in group] == [0.0] * 4 and group[1].parts == {"helpfulness": None, "format": 1.0}
    group[2].reward = float("inf")
    with pytest.raises(NonFiniteError, match="step 3: non-finite reward"):
        _neutralise_nonfinite(group, "stop", step=2)
