"""A real `sbatch`: `launcher=slurm` on a one-node Slurm cluster on this machine (`make slurm-local`).

Skipped where no Slurm controller answers (`sinfo`); `.ci/run` starts one when slurm-wlm is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import launch_stage

pytestmark = pytest.mark.integration


def slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster here (make slurm-local starts one)")
def test_sbatch_runs_stage1_through_the_generated_script(tmp_path, tiny_model_dir):
    p = launch_stage(
        "stage1",
        tmp_path,
        "sl",
        "launcher=slurm",
        "launcher.slurm.wait=true",
        f"model.path={tiny_model_dir}",
        "model.name=tiny",
        "data.num_examples=12",
        "stage.pack_length=256",
        "stage.max_steps=2",
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Submitted batch job" in p.stdout
    stage = tmp_path / "sl" / "stage1"
    assert json.loads((stage / "manifest.json").read_text())["status"] == "complete"
    (log,) = (stage / "slurm").glob("*.out")
    assert "launching sl/stage1 on 1 x cpu with torchrun" in log.read_text()
