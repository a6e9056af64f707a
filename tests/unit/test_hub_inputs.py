"""Hub ids wherever a local path is accepted, resolved offline from a hub cache the test lays out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.run import hub
from pipeline.run.hub import HubInputError, input_path

SHA = "0123456789abcdef0123456789abcdef01234567"


def lay_out(cache: Path, repo_type: str, repo_id: str, files: dict[str, str]) -> Path:
    """The layout huggingface_hub writes: <type>s--org--name/refs/main -> snapshots/<sha>/<files>."""
    root = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(SHA)
    snap = root / "snapshots" / SHA
    for name, text in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_text(text)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_model_id_and_dataset_file_resolve_to_the_cache(offline_cache):
    snap = lay_out(offline_cache, "model", "org/tiny", {"config.json": "{}", "tokenizer.json": "{}"})
    data = lay_out(offline_cache, "dataset", "org/prompts", {"data/test.jsonl": json.dumps({"q": 1}) + "\n"})
    assert input_path("org/tiny") == snap
    assert input_path("hf://org/tiny") == snap
    assert input_path("hf://org/tiny/config.json") == snap / "config.json"
    assert input_path("hf://datasets/org/prompts/data/test.jsonl") == data / "data" / "test.jsonl"


def test_local_paths_win_and_stay_local(offline_cache, tmp_path):
    local = tmp_path / "org" / "tiny"
    local.mkdir(parents=True)
    assert input_path(str(local)) == local
    assert input_path("conf/config.yaml") == hub.absolute("conf/config.yaml")  # an existing relative path
    assert input_path("runs/x/y") == hub.absolute("runs/x/y")  # two slashes: never a hub id


def test_a_miss_offline_is_one_line_naming_key_input_and_cache(offline_cache):
    with pytest.raises(HubInputError) as e:
        input_path("org/absent", "model.path")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("config key 'model.path': org/absent: not in the local Hugging Face cache")
    assert str(offline_cache) in message and "hf download org/absent" in message
    with pytest.raises(HubInputError, match="hf download org/prompts --repo-type dataset"):
        input_path("hf://datasets/org/prompts/missing.jsonl")
    with pytest.raises(HubInputError, match="expected hf://"):
        input_path("hf://datasets/onlyorg")


def test_a_model_stage_source_accepts_a_hub_id(offline_cache, base_dir):
    from pipeline.run.config import compose
    from pipeline.run.folders import resolve_source

    snap = lay_out(offline_cache, "model", "org/tiny", {"config.json": "{}"})
    shutil.copy(base_dir / "tokenizer.json", snap / "tokenizer.json")
    cfg = compose(["stage=stage2", "model.path=org/tiny"])
    assert resolve_source(cfg, "base", "stage.init_from", "stage2")["path"] == str(snap)
    assert resolve_source(cfg, "org/tiny", "stage.init_from", "stage2") == {"kind": "path", "path": str(snap)}
