"""The resolved config of every stage under every experiment preset, against a golden snapshot.

`tests/golden/resolved_configs.json` was written by `scripts/snapshot_configs.py` before the config
moved its defaults into the typed schema and its optimizer keys into `stage.optim`; the only
differences allowed are those renames (`RENAMED_KEYS`). A change of any default fails here until the
snapshot is re-written on purpose (`python scripts/snapshot_configs.py`), so it is never silent.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from pipeline.run.config import RENAMED_KEYS
from pipeline.run.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from snapshot_configs import GOLDEN, snapshot  # noqa: E402


def renamed(config: dict) -> dict:
    """An old-layout config with its renamed keys moved to where they live now."""
    out = copy.deepcopy(config)
    for old, new in RENAMED_KEYS.items():
        old_parent, old_leaf = old.rsplit(".", 1)
        parent = out
        for part in old_parent.split("."):
            parent = parent.get(part, {})
        if old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        target = out
        *path, leaf = new.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[leaf] = value
    return out


@pytest.fixture(scope="module")
def current() -> dict:
    return snapshot()


GOLDEN_CONFIGS = json.loads(Path(GOLDEN).read_text())


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_resolved_config_matches_the_snapshot(current, name):
    assert name in current, f"{name} no longer composes"
    assert current[name] == renamed(GOLDEN_CONFIGS[name])


def test_snapshot_covers_every_stage_and_preset(current):
    assert set(current) == set(GOLDEN_CONFIGS)
