import json

import pytest

from pipeline.run.config import compose
from pipeline.run.folders import InputError, read_manifest, resolve_init, update_manifest
from pipeline.train import checkpoint


def cfg_for(tmp_path, *over):
    return compose([f"runs_dir={tmp_path}", "run_name=r", *over])


def test_base_model_missing_says_run_setup(tmp_path):
    with pytest.raises(InputError, match="make setup"):
        resolve_init(cfg_for(tmp_path, f"model.path={tmp_path / 'none'}"))


def test_parent_stage_not_run_says_what_to_run(tmp_path):
    cfg = cfg_for(tmp_path, "stage.name=stage3", "stage.init_from=stage1")
    with pytest.raises(InputError, match="make stage-1"):
        resolve_init(cfg)


def test_parent_stage_unfinished_is_an_error(tmp_path):
    update_manifest(tmp_path / "r" / "stage1", status="running")
    cfg = cfg_for(tmp_path, "stage.name=stage3", "stage.init_from=stage1")
    with pytest.raises(InputError, match="running: finish it with `make stage-1`"):
        resolve_init(cfg)


def test_parent_export_comes_from_its_manifest(tmp_path):
    export = tmp_path / "somewhere" / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    update_manifest(tmp_path / "r" / "stage1", status="complete", outputs={"export": str(export)})
    init = resolve_init(cfg_for(tmp_path, "stage.name=stage3", "stage.init_from=stage1"))
    assert init["path"] == str(export) and init["stage"] == "stage1"


def test_corrupt_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(InputError, match="manifest.json: corrupt"):
        read_manifest(tmp_path)


def test_latest_checkpoint_ignores_incomplete_and_staging(tmp_path):
    ck = tmp_path / "checkpoints"
    for step, complete in [(2, True), (4, True), (6, False)]:
        d = ck / checkpoint.tag_for(step)
        d.mkdir(parents=True)
        if complete:
            (d / checkpoint.MARKER).write_text(json.dumps({"step": step}))
    (ck / ".staging" / checkpoint.tag_for(8)).mkdir(parents=True)
    assert checkpoint.latest(ck).name == "step_00000004"
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_launcher_help_prints_usage_and_the_stages():
    import subprocess
    import sys

    from pipeline.run.paths import REPO_ROOT

    p = subprocess.run(
        [sys.executable, "-m", "pipeline.run.launch", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "make stage-1" in p.stdout and "rm_safety" in p.stdout
