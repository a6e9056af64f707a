"""One stage registry (`pipeline.run.registry`): every stage the config, the Makefile and the tools know
is in it, and they all read their stage lists from it."""

from __future__ import annotations

import re

import pytest

from pipeline.run import registry
from pipeline.run.config import compose
from pipeline.run.paths import CONF_DIR, REPO_ROOT
from pipeline.run.registry import STAGE_SCHEMAS

STAGE_FILES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))
MAKEFILE = (REPO_ROOT / "Makefile").read_text()


def test_every_stage_config_is_registered_and_every_registered_stage_has_a_config():
    assert sorted(registry.BY_NAME) == STAGE_FILES


@pytest.mark.parametrize("name", STAGE_FILES)
def test_registry_entry_matches_the_stage_config(name):
    spec, stage = registry.BY_NAME[name], compose([f"stage={name}"]).stage
    assert spec.kind == stage.kind and spec.kind in STAGE_SCHEMAS
    assert stage.name == name
    if spec.parent is not None:
        # the default parent is what the stage reads: its init_from (distill: the dataset of dataset_from)
        assert spec.parent in (stage.init_from, stage.get("dataset_from"))
        assert spec.parent in registry.BY_NAME


@pytest.mark.parametrize("spec", registry.STAGES, ids=lambda s: s.name)
def test_make_target_exists_and_runs_the_stage(spec):
    target = spec.make_target.removeprefix("make ")
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", MAKEFILE, re.M)
    assert recipe, f"no Makefile target {target}"
    assert f"stage={spec.name} " in recipe.group(1)


def test_make_pipeline_runs_the_registered_stages_in_order():
    """`make pipeline` = every stage in registry order, except distill (an optional branch off stage-3)."""
    chain = re.search(r"^pipeline:.*\n\t\$\(MAKE\) ([^\n]*?) ARGS", MAKEFILE, re.M).group(1).split()
    expected = []
    for spec in registry.STAGES:
        target = spec.make_target.removeprefix("make ")
        if spec.name != "distill" and target not in expected:
            expected.append(target)
    assert chain == expected


def test_tools_read_their_stage_lists_from_the_registry():
    from pipeline.run import report, status

    assert status.ORDER == tuple(s.name for s in registry.STAGES)
    assert report.SFT_STAGES == ("stage1", "stage3", "distill") and report.RL_STAGES == ("stage2", "stage4")
    assert registry.names(policy=True) == ["stage1", "stage2", "stage3", "stage4", "distill"]
    assert registry.make_target("rm_safety") == "make train-rm"
