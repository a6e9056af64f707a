"""Write the resolved config of every stage under every experiment preset to a golden JSON file.

    .venv/bin/python scripts/snapshot_configs.py            # tests/golden/resolved_configs.json

`tests/unit/test_config_golden.py` composes the same configs and compares them with this file, so a
change that moves a default (a refactor, a YAML edit) fails loudly until the snapshot is re-written on
purpose. Machine-specific paths (the checkout, the model cache) are written as <repo> and <cache>.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOLDEN = REPO / "tests" / "golden" / "resolved_configs.json"


def _api():
    try:  # the package layout since the architecture refactor
        from pipeline.run.config import compose, to_plain
        from pipeline.run.paths import cache_dir
        from pipeline.run.registry import STAGES

        return compose, to_plain, cache_dir, [s.name for s in STAGES]
    except ImportError:  # the flat layout before it (used once, to take the "before" snapshot)
        from omegaconf import OmegaConf

        from pipeline.run.config import compose
        from pipeline.run.paths import cache_dir

        names = ["stage1", "stage2", "stage3", "rm_helpful", "rm_safety", "stage4", "eval", "distill"]
        return compose, lambda cfg: OmegaConf.to_container(cfg, resolve=True), cache_dir, names


EXPERIMENTS = ("cpu", "cpu_fast", "cpu_long", "gpu", "r1_zero", "smoke")


def normalise(value, repo: str, cache: str):
    if isinstance(value, dict):
        return {k: normalise(v, repo, cache) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, repo, cache) for v in value]
    if isinstance(value, str):
        return value.replace(cache, "<cache>").replace(repo, "<repo>")
    return value


def snapshot() -> dict[str, dict]:
    compose, to_plain, cache_dir, stages = _api()
    out = {}
    for experiment in EXPERIMENTS:
        for stage in stages:
            cfg = compose([f"stage={stage}", f"experiment={experiment}"])
            out[f"{experiment}/{stage}"] = normalise(to_plain(cfg), str(REPO), str(cache_dir()))
    return out


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
