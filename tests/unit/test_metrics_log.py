"""metrics.jsonl on resume: records after the checkpoint are dropped, and before any checkpoint all are."""

from __future__ import annotations

import json

from pipeline.run.config import compose
from pipeline.train.metrics import MetricsLogger, read_metrics


def _write(path, steps):
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in steps))


def test_a_resume_keeps_the_records_up_to_its_checkpoint(tmp_path):
    cfg = compose(["logger=none"])
    path = tmp_path / "metrics.jsonl"
    _write(path, [0, 1, 2, 3])
    MetricsLogger(path, cfg, resume_step=2, enabled=True).close()
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]


def test_before_any_checkpoint_the_step_0_record_is_logged_once(tmp_path):
    cfg = compose(["logger=none"])
    path = tmp_path / "metrics.jsonl"
    _write(path, [0])  # an attempt logged its step-0 eval and was killed before its first checkpoint
    logger = MetricsLogger(path, cfg, resume_step=0, enabled=True)
    logger.log(0, {"x": 0})
    logger.close()
    assert [r["step"] for r in read_metrics(path)] == [0]
