"""Resume state saved beside the weights in every checkpoint: what a stage needs, besides the
DeepSpeed engine's own weights, optimizer and scheduler, to continue exactly where it stopped.

A state is a small dataclass of plain values (lingua's `TrainState`). `save_state` writes it as
`train_state.json` (rank 0) plus this rank's RNG streams (`rng_rank<r>.pt`, every rank); `load_state`
restores both. The RL stages keep their own, larger state (`pipeline.rl.state.RLState`) through the
same two functions.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

import numpy as np
import torch

STATE_FILE = "train_state.json"
T = TypeVar("T")


@dataclass
class TrainState:
    """SFT and reward-model training: the data position is a pure function of the step."""

    step: int = 0  # optimizer steps taken
    loss: Optional[float] = None  # loss of the last step (reported when a finished stage is relaunched)

    def save(self, folder: Path, rank: int) -> None:
        save_state(self, folder, rank)

    @classmethod
    def load(cls, folder: Path, rank: int) -> TrainState:
        return load_state(cls, folder, rank)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(state, folder: Path, rank: int) -> None:
    """Collective: rank 0 writes the state, every rank its RNG."""
    if rank == 0:
        (folder / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), sort_keys=True) + "\n")
    torch.save(rng_state(), folder / f"rng_rank{rank}.pt")


def load_state(state_type: type[T], folder: Path, rank: int) -> T:
    """A rank the checkpoint did not have (it was written by fewer processes) takes rank 0's RNG: the
    stages draw nothing that differs by rank from the global RNG (rollout seeds are per request)."""
    rng_file = folder / f"rng_rank{rank}.pt"
    if not rng_file.exists():
        rng_file = folder / "rng_rank0.pt"
    set_rng_state(torch.load(rng_file, weights_only=False))
    return state_type(**json.loads((folder / STATE_FILE).read_text()))
