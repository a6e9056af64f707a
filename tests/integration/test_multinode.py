"""Two nodes on localhost: two launchers, `launcher.nnodes=2` with one process each, run stage-1 and
stage-2 to completion and log what one launcher with two processes logs."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, TINY_TASK, launch_command, launch_stage, stage_env

pytestmark = pytest.mark.integration
TIMEOUT = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(stage: str, runs: Path, run: str, *overrides: str) -> list[subprocess.CompletedProcess]:
    """Start node 1 first (it waits at the rendezvous), then node 0; wait for both."""
    port = free_port()
    common = ["launcher.nnodes=2", "launcher.nproc=1", "launcher.master_addr=127.0.0.1", f"launcher.master_port={port}"]
    procs = [
        subprocess.Popen(
            launch_command(stage, runs, run, *overrides, *common, f"launcher.node_rank={node}"),
            cwd=REPO,
            env=stage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (1, 0)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def metrics(stage: Path, drop=("step_seconds", "tokens_per_s", "time_", "rollout_tok_per_s")) -> list[dict]:
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(k.startswith(d) or k == d for d in drop)} for r in rows]


STAGE1 = ["model.name=tiny", "data.num_examples=24", "stage.pack_length=512", "stage.max_steps=3"]
STAGE1 += ["stage.gradient_accumulation_steps=1", "stage.optim.lr=3e-3", "stage.save_every=2"]


def test_stage1_on_two_nodes_equals_two_processes_on_one(tmp_path, tiny_model_dir):
    model = f"model.path={tiny_model_dir}"
    one = launch_stage("stage1", tmp_path, "onenode", model, *STAGE1, "launcher.nproc=2", timeout=TIMEOUT)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    follower, leader = two_nodes("stage1", tmp_path, "twonodes", model, *STAGE1)
    assert leader.returncode == 0 and follower.returncode == 0, leader.stderr[-3000:] + follower.stderr[-3000:]
    assert "on 2 nodes x 1 x cpu" in leader.stdout and "joining twonodes/stage1 as node 1 of 2" in follower.stdout
    got, want = metrics(tmp_path / "twonodes" / "stage1"), metrics(tmp_path / "onenode" / "stage1")
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    manifest = json.loads((tmp_path / "twonodes" / "stage1" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert not list((tmp_path / "twonodes" / "stage1").glob(".shared_fs_probe"))  # the check cleans up


@pytest.mark.slow
def test_stage2_on_two_nodes_equals_two_processes_on_one(tmp_path, warm_tiny_model_dir):
    pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")
    args = [f"stage.init_from={warm_tiny_model_dir}", *TINY_TASK, "stage.steps=2", "stage.prompts_per_step=2"]
    args += ["stage.group_size=4", "stage.rollout.max_new_tokens=32", "stage.eval_every=0", "stage.optim.lr=1e-4"]
    args += ["data.num_examples=16", "data.eval_examples=4"]
    one = launch_stage("stage2", tmp_path, "onenode", *args, "launcher.nproc=2", timeout=TIMEOUT)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    follower, leader = two_nodes("stage2", tmp_path, "twonodes", *args)
    assert leader.returncode == 0 and follower.returncode == 0, leader.stderr[-3000:] + follower.stderr[-3000:]
    got, want = metrics(tmp_path / "twonodes" / "stage2"), metrics(tmp_path / "onenode" / "stage2")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for key in ("reward", "response_len_mean", "samples", "loss"):
        assert got[0][key] == pytest.approx(want[0][key], rel=1e-5), key
