"""The RL stages' resume state: one typed object saved in every checkpoint (with the RNG streams)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.train.state import load_state, save_state


@dataclass
class RLState:
    step: int = 0  # RL steps (rollout batches) done
    ref_step: int = 0  # step at which the KL reference was last set to the policy
    cursors: dict[str, int] = field(default_factory=dict)  # per prompt pool: prompts drawn so far

    def save(self, folder: Path, rank: int) -> None:
        save_state(self, folder, rank)

    @classmethod
    def load(cls, folder: Path, rank: int) -> RLState:
        return load_state(cls, folder, rank)
