"""`make bench ARGS="mode=tiny"`: every part of the benchmark runs (TRL in its own venv included) and
its numbers are sane. Not a timed test: the figures that matter come from `make bench` on real sizes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from pipeline.run.paths import REPO_ROOT

pytestmark = pytest.mark.integration
pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")


@pytest.mark.slow  # 127 s: the benchmark harness, run by make bench
def test_tiny_benchmark_runs_and_reports_sane_numbers():
    p = subprocess.run(
        [sys.executable, "scripts/bench.py", "mode=tiny"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    result = json.loads((REPO_ROOT / "runs" / "bench" / "bench-tiny.json").read_text())
    assert set(result["ratios"]) == {"grpo_step_vs_trl", "rollout_vs_raw_vllm", "weight_sync_share", "sft_vs_padded_hf"}
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values()), result["ratios"]
    for part in (result["grpo_project"], result["grpo_trl"]):
        assert part["step_seconds"] > 0 and part["time_generate"] > 0 and part["peak_rss_gb"] > 0
    assert result["rollouts"]["project_tok_per_s"] > 0 and result["rollouts"]["raw_tok_per_s"] > 0
    assert result["sft"]["project"]["tok_per_s"] > 0 and result["sft"]["hf_padded"]["tok_per_s"] > 0
    assert "| GRPO step (s) |" in p.stdout and result["hardware"]["cores"] >= 1
