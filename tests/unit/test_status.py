"""`make status`: states and key figures read from manifests."""

import json
import os
import time

from pipeline.run.folders import write_manifest
from pipeline.run.status import stage_state, table


def test_states_and_key_figures(tmp_path):
    run = tmp_path / "r"
    write_manifest(run / "stage1", {"status": "complete", "summary": {"final_loss": 0.1234567, "steps": 50}})
    write_manifest(run / "stage2", {"status": "failed", "exit_code": -9})
    write_manifest(run / "stage3", {"status": "running"})
    old = time.time() - 7200
    os.utime(run / "stage3" / "manifest.json", (old, old))
    assert stage_state(run / "stage1") == ("complete", {"final_loss": 0.1234567, "steps": 50})
    assert stage_state(run / "stage2")[0] == "failed (exit -9)"
    assert stage_state(run / "stage3")[0].startswith("stale?")
    assert stage_state(run / "stage4") == ("not started", {})
    text = table(run)
    assert "| stage1 | complete | final_loss=0.1235, steps=50 |" in text
    assert "| stage4 | not started |  |" in text
    write_manifest(run / "stage2_try", {"status": "complete", "summary": {}})
    assert "| stage2_try | complete |" in table(run)  # extra stages of the run are listed too
    assert json.loads((run / "stage1" / "manifest.json").read_text())["status"] == "complete"


def test_run_dir_from_args_reads_a_pipelines_args_and_rejects_typos(tmp_path):
    import pytest

    from pipeline.run.config import ConfigError
    from pipeline.run.folders import run_dir_from_args

    args = [f"runs_dir={tmp_path}", "run_name=x", "experiment=cpu_fast", "stage.optim.lr=1e-5", "+data.foo=1"]
    assert run_dir_from_args(args, "make status") == tmp_path / "x"
    with pytest.raises(ConfigError, match=r"make report: unknown config key\(s\) \['run_nmae'\]"):
        run_dir_from_args(["run_nmae=x"], "make report")
