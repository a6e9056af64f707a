"""Slow tier (`make test-slow`): the memory a stage-2 run on the embedded model really takes.

A stage-2 run of this shape (bf16 trainer, 6 prompts x 8 samples) was OOM-killed on a 24 GB machine:
the verifier's fork-pool workers had copied the 10 GB trainer. The launcher now records the peak RSS
of the stage's whole process tree (`pipeline.run.memory`); this run must stay within the budget.
"""

from __future__ import annotations

import json

import pytest
from conftest import launch_stage

from pipeline.run.paths import base_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUDGET_GIB = 12.0


def test_stage2_on_the_embedded_model_stays_within_its_memory_budget(tmp_path):
    p = launch_stage(
        "stage2",
        tmp_path,
        "mem",
        f"model.path={base_model_dir()}",
        "model.dtype=auto",  # bf16 where the CPU has it, as in the run that was killed
        "stage.init_from=base",
        "stage.steps=4",
        "stage.prompts_per_step=6",
        "stage.eval_every=0",
        "stage.save_every=2",
        timeout=1800,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    manifest = json.loads((tmp_path / "mem" / "stage2" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert 1.0 < manifest["peak_rss_gib"] <= BUDGET_GIB, manifest["peak_rss_gib"]
    assert manifest["peak_rss_processes"] >= 3  # torchrun, the trainer, the verifier's fork server at least
