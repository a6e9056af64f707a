"""Numerical guards: a NaN or inf in a loss or the gradients never reaches the weights.

Every optimizer step of every training stage goes through `guarded_step`. A non-finite loss is not
back-propagated; the gradients are checked before the step (on ZeRO 0/1, where they are whole on each
rank; under ZeRO 2/3 the loss check alone applies). Then, by `stage.optim.on_nonfinite`:

* `skip`: the gradients are zeroed and the step is taken at learning rate 0, so the weights do not
  move (Adam's moments decay as for a zero gradient, and DeepSpeed's step and schedule counters stay
  in step with the data). The step is counted in the metrics (`nonfinite_skipped`).
* `stop`: the stage ends with one line saying where, and that the last checkpoint is intact.

On several processes the ranks agree first (`dist.all_true`): one rank's NaN skips the step on all of
them, so they stay in step and take the same collectives.
"""

from __future__ import annotations

import torch

from pipeline.train.dist import all_true


class NonFiniteError(RuntimeError):
    """Training met a NaN/inf and `stage.optim.on_nonfinite=stop`."""


def finite(value) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


def grads_finite(engine) -> bool:
    """All gradients held on this rank are finite (ZeRO 0/1; ZeRO 2/3 keep none in `.grad`)."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)


def partitioned(model) -> bool:
    """Are the model's parameters ZeRO-3 partitioned (every forward then gathers them collectively)?"""
    return any(hasattr(p, "ds_status") for p in getattr(model, "module", model).parameters())


def idle_forward(model, device: torch.device):
    """A one-token forward whose output is discarded: under ZeRO-3 a rank with no rows left runs it so
    that it takes part in the parameter gathers of the ranks that still have rows."""
    return model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)


def zero_backward(engine) -> None:
    """Give every trainable parameter a (zero) gradient through the engine's own backward machinery.
    Under ZeRO-3 the parameters are shards outside a forward, so a one-token forward provides them."""
    if partitioned(engine):
        engine.backward(idle_forward(engine, engine.device).logits.float().sum() * 0.0)
        return
    engine.backward(sum(p.sum() for p in engine.module.parameters() if p.requires_grad) * 0.0)


def guarded_step(engine, loss_finite: bool, policy: str, where: str) -> bool:
    """`engine.step()`, unless the loss or the gradients are not finite; returns True if skipped."""
    if all_true(loss_finite and grads_finite(engine)):
        engine.step()
        return False
    if policy == "stop":
        raise NonFiniteError(
            f"{where}: non-finite loss or gradient (NaN/inf); stopped as stage.optim.on_nonfinite=stop asks. "
            "The last checkpoint is intact; set stage.optim.on_nonfinite=skip to skip such steps instead"
        )
    for p in engine.module.parameters():
        if p.grad is not None:
            p.grad.zero_()
    zero_backward(engine)  # the step below finds the gradients it expects even if none were computed
    for group in engine.optimizer.param_groups:
        group["lr"] = 0.0  # the scheduler sets the next step's rate again inside engine.step()
    engine.step()
    return True
