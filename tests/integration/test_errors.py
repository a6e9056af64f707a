"""A user error raised inside the distributed job (after torchrun started it) still ends the run with
one line naming the problem, as the last thing printed, with no resume hint; the manifest records it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import launch_stage

pytestmark = pytest.mark.integration


def test_an_error_inside_the_job_is_the_last_line_without_a_resume_hint(tmp_path, tiny_model_dir):
    model = tmp_path / "no-markers"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (model / name).unlink(missing_ok=True)
    p = launch_stage("stage1", tmp_path, "bad", f"model.path={model}", "model.name=tiny", "data.num_examples=4")
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: bad/stage1: ") and "chat template has no assistant marker" in last
    assert "resume" not in last
    manifest = json.loads((tmp_path / "bad" / "stage1" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "assistant marker" in manifest["error"]
