"""The stages of the pipeline, in order: one table that `make status`, `make report`, `make eval`,
the launcher's "run X first" messages and the config all read. A stage missing here fails
`tests/unit/test_registry.py`.

    name         the folder under runs/<run>/, and what `init_from` and `stage=` name it by
    kind         its config schema (`STAGE_SCHEMAS` below: kind -> dataclass in `pipeline.run.schema`)
    make_target  what produces it
    parent       the stage whose output it reads by default: its init_from (distill: its dataset_from);
                 None when it starts from the base model
    exports      what its manifest hands on: `export` (an HF folder), `dataset`, `results`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.run.schema import (
    AlignStageConfig,
    DistillStageConfig,
    EvalStageConfig,
    GRPOStageConfig,
    RMStageConfig,
    RSStageConfig,
    SFTStageConfig,
)

# Each stage kind's config schema; `pipeline.run.config` validates `stage` against it.
STAGE_SCHEMAS: dict[str, type] = {
    "sft": SFTStageConfig,
    "grpo": GRPOStageConfig,
    "rs_sft": RSStageConfig,
    "eval": EvalStageConfig,
    "rm": RMStageConfig,
    "align": AlignStageConfig,
    "distill": DistillStageConfig,
}


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    make_target: str
    parent: Optional[str]
    exports: tuple[str, ...]

    @property
    def is_policy(self) -> bool:
        """Its export is a causal LM that answers prompts (what `make eval` compares)."""
        return "export" in self.exports and self.kind != "rm"

    @property
    def trainer(self) -> str:
        """Which trainer made it: sft (loss curve), rl (reward curves), rm, or none."""
        return {"sft": "sft", "rs_sft": "sft", "distill": "sft", "grpo": "rl", "align": "rl", "rm": "rm"}.get(
            self.kind, "none"
        )


STAGES: tuple[StageSpec, ...] = (
    StageSpec("stage1", "sft", "make stage-1", None, ("export",)),
    StageSpec("stage2", "grpo", "make stage-2", "stage1", ("export",)),
    StageSpec("stage3", "rs_sft", "make stage-3", "stage2", ("dataset", "export")),
    StageSpec("rm_helpful", "rm", "make train-rm", None, ("export",)),
    StageSpec("rm_safety", "rm", "make train-rm", None, ("export",)),
    StageSpec("stage4", "align", "make stage-4", "stage3", ("export",)),
    StageSpec("distill", "distill", "make distill", "stage3", ("export",)),
    StageSpec("eval", "eval", "make eval", None, ("results",)),
)
BY_NAME: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}


def make_target(name: str) -> str:
    """The command that produces stage `name` (for "run X first" messages)."""
    return BY_NAME[name].make_target if name in BY_NAME else f"stage {name}"


def names(trainer: Optional[str] = None, policy: Optional[bool] = None) -> list[str]:
    """Stage names in pipeline order, optionally only those of one trainer or only policies."""
    return [
        s.name
        for s in STAGES
        if (trainer is None or s.trainer == trainer) and (policy is None or s.is_policy == policy)
    ]
