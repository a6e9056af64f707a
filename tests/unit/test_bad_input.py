"""Bad input ends with one line naming the file, line or key, before the job starts where possible."""

from __future__ import annotations

import shutil

import pytest

from pipeline.data.packing import tokenize_chat
from pipeline.data.sources import DataError
from pipeline.run import errors, launch
from pipeline.run.config import ConfigError, compose
from pipeline.run.folders import InputError

MESSAGES = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>2</think> \\boxed{2}"}]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_malformed_jsonl_fails_before_the_job_in_one_last_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "resp\n')
    rc = launch.launch(["stage=stage1", f"runs_dir={tmp_path}", "data.source=file", f"data.path={bad}"])
    err = capsys.readouterr().err
    assert rc == errors.USER_ERROR_EXIT
    assert last_line(err).startswith(f"error: {bad}:2: invalid JSON (")
    assert "resume" not in err and not (tmp_path / "default" / "stage1").exists()  # nothing started


@pytest.mark.parametrize(
    "rows, message",
    [
        ('{"question": "no response"}\n', "bad.jsonl:1: needs a 'messages' column"),
        ("\n\n", "no usable rows in the data source"),
        ('{"prompt": "q", "response": "no think block"}\n', "bad.jsonl:1: assistant answer is not in R1 format"),
    ],
)
def test_missing_fields_and_empty_data_name_the_line(tmp_path, capsys, rows, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows)
    rc = launch.launch(["stage=stage1", f"runs_dir={tmp_path}", "data.source=file", f"data.path={bad}"])
    assert rc == errors.USER_ERROR_EXIT and message in last_line(capsys.readouterr().err)


def test_a_missing_model_folder_or_tokenizer_is_named(tmp_path, capsys, base_dir):
    rc = launch.launch(["stage=stage1", f"runs_dir={tmp_path}", f"model.path={tmp_path / 'nope'}", "model.name=x"])
    assert rc == 2 and f"base model not found at {tmp_path / 'nope'}" in last_line(capsys.readouterr().err)
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    shutil.copy(base_dir / "config.json", no_tok / "config.json")
    rc = launch.launch(["stage=stage1", f"runs_dir={tmp_path}", f"model.path={no_tok}", "model.name=x"])
    assert rc == 2 and f"'model.path': {no_tok} has no tokenizer" in last_line(capsys.readouterr().err)
    with pytest.raises(InputError, match="has no tokenizer"):
        launch.check_inputs(compose(["stage=stage2", f"stage.init_from={no_tok}"]))


def test_an_unknown_override_key_is_named(tmp_path, capsys):
    assert launch.launch(["stage=stage1", f"runs_dir={tmp_path}", "stage.learning_rate=1"]) == 2
    assert "stage.learning_rate" in last_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "override, key",
    [
        ("stage.group_size=1", "stage.group_size"),
        ("stage.rollout.temperature=0", "stage.rollout.temperature"),
        ("stage.rollout.top_p=0.9", "stage.rollout.top_p"),
    ],
)
def test_settings_grpo_cannot_learn_with_are_refused(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        compose(["stage=stage2", override])


def test_prompts_per_step_must_split_over_the_processes(tmp_path, base_dir):
    cfg = compose(["stage=stage2", "stage.prompts_per_step=3", f"stage.init_from={base_dir}"])
    launch.check_inputs(cfg, nproc=1)
    with pytest.raises(ConfigError, match="3 prompts per step do not split over 2 processes"):
        launch.check_inputs(cfg, nproc=2)


def test_a_chat_template_without_assistant_markers_is_named(tokenizer):
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(DataError, match="chat template has no assistant marker"):
        tokenize_chat(plain, MESSAGES)
    plain.chat_template = None
    with pytest.raises(DataError, match="cannot apply a chat template"):
        tokenize_chat(plain, MESSAGES)


def test_a_user_error_inside_a_stage_is_one_line_and_left_for_the_launcher(tmp_path, monkeypatch, capsys):
    def main(argv):
        raise DataError("data.jsonl:7: expected a JSON object,\n got list")

    monkeypatch.setenv(errors.STAGE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    assert errors.run_stage(main) == errors.USER_ERROR_EXIT
    assert last_line(capsys.readouterr().err) == "error: data.jsonl:7: expected a JSON object, got list"
    assert errors.take_error(tmp_path) == "data.jsonl:7: expected a JSON object, got list"
    assert errors.take_error(tmp_path) is None  # read once


def test_a_crash_is_not_a_user_error():
    def main(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        errors.run_stage(main)


def test_a_short_write_is_a_write_failure_and_names_the_checkpoint_that_survived(tmp_path, monkeypatch):
    import torch

    from pipeline.run import faults
    from pipeline.train.checkpoint import MARKER, is_write_failure, write_failure

    monkeypatch.setenv("R1_FAULT", "disk_full:7")
    with pytest.raises(Exception) as torch_error, faults.disk_full(7):
        torch.save({"w": torch.zeros(100_000)}, tmp_path / "w.pt")  # torch's C++ writer: a RuntimeError
    with pytest.raises(OSError) as os_error, faults.disk_full(7):
        (tmp_path / "b").write_bytes(b"0" * 100_000)
    with faults.disk_full(8):  # another step: no limit
        (tmp_path / "c").write_bytes(b"0" * 100_000)
    assert is_write_failure(torch_error.value) and is_write_failure(os_error.value)
    assert not is_write_failure(ValueError("a bug, not the disk"))

    kept = tmp_path / "checkpoints" / "step_00000002"
    kept.mkdir(parents=True)
    (kept / MARKER).write_text("{}")
    message = str(write_failure("checkpoint step_00000004", kept.parent, os_error.value, kept))
    assert "File too large" in message and "GiB free" in message
    assert "a write was cut short" in str(write_failure("checkpoint x", kept.parent, torch_error.value, kept))
    assert "checkpoint step_00000002 is intact" in message and "resume from it" in message
    none = str(write_failure("the export", tmp_path / "gone", os_error.value, None))
    assert "no earlier checkpoint exists" in none
