"""Stage-1 for real, through the same launcher `make stage-1` uses, on a tiny model.

No mocks: torchrun starts the stage module, DeepSpeed (gloo, CPU) trains, checkpoints are written
and loaded by DeepSpeed. A run killed mid-way (SIGKILL of the whole job from outside, and a
kill inside a checkpoint save) is resumed and must end with exactly the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import launch_command, launch_stage

from pipeline.train.checkpoint import MARKER, STAGING, complete_checkpoints
from pipeline.train.metrics import read_metrics

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def small(model: Path, *extra: str) -> list[str]:
    return [
        f"model.path={model}",
        "model.name=tiny",
        "data.num_examples=30",
        "stage.pack_length=512",
        "stage.gradient_accumulation_steps=2",
        f"stage.max_steps={STEPS}",
        "stage.save_every=2",
        "stage.keep_last=2",
        "stage.optim.lr=3e-3",
        "stage.optim.warmup_steps=2",
        *extra,
    ]


def launch_cmd(runs: Path, run: str, model: Path, *extra: str) -> list[str]:
    return launch_command("stage1", runs, run, *small(model, *extra))


def launch(
    runs: Path, run: str, model: Path, *extra: str, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    return launch_stage("stage1", runs, run, *small(model, *extra), env_extra=env_extra, timeout=600)


def losses(stage: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(stage / "metrics.jsonl")]


def manifest(stage: Path) -> dict:
    return json.loads((stage / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(runs, tiny_model_dir) -> Path:
    """The uninterrupted run every resumed run is compared with."""
    p = launch(runs, "ref", tiny_model_dir)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return runs / "ref" / "stage1"


def test_uninterrupted_run_trains_and_exports(reference):
    m = manifest(reference)
    assert m["status"] == "complete"
    assert 0.2 < m["peak_rss_gib"] < 8 and m["peak_rss_processes"] >= 2  # the launcher's, over torchrun + rank
    assert m["inputs"]["init"]["kind"] == "base"
    assert len(m["inputs"]["data"]["sha256"]) == 64
    curve = losses(reference)
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert curve[-1][1] < curve[0][1] - 1.0, curve  # lr 3e-3 on a random tiny model: loss falls fast
    records = read_metrics(reference / "metrics.jsonl")
    assert all(r["grad_norm"] > 0 and r["tok_per_s"] > 0 for r in records)
    assert records[0]["lr"] == pytest.approx(1.5e-3)  # warmup: step 1 of 2

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = Path(m["outputs"]["export"])
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.chat_template and (export / "model.safetensors").exists()
    out = model(**tok("1 + 1 =", return_tensors="pt"))
    assert torch.isfinite(out.logits).all()
    # the export is the trained model, not the initial one
    base = AutoModelForCausalLM.from_pretrained(m["inputs"]["init"]["path"])
    assert not torch.equal(base.model.embed_tokens.weight, model.model.embed_tokens.weight)
    kept = [p.name for p in complete_checkpoints(reference / "checkpoints")]
    assert kept == ["step_00000004", "step_00000006"]  # keep_last=2


def test_rerunning_a_finished_stage_does_nothing(reference, runs, tiny_model_dir):
    before = (reference / "export" / "model.safetensors").stat().st_mtime_ns
    t0 = time.time()
    p = launch(runs, "ref", tiny_model_dir)
    assert p.returncode == 0 and "already complete" in p.stdout
    assert time.time() - t0 < 30
    assert (reference / "export" / "model.safetensors").stat().st_mtime_ns == before


def test_external_kill_mid_run_then_resume_gives_identical_losses(reference, runs, tiny_model_dir):
    stage = runs / "killed" / "stage1"
    proc = subprocess.Popen(
        launch_cmd(runs, "killed", tiny_model_dir),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (stage / "checkpoints" / "step_00000002" / MARKER).exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher; torchrun and the worker must die with it
    proc.wait()
    config = str(stage / "config.yaml")
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", config], capture_output=True).returncode == 0:
        assert time.time() < deadline, "trainer processes outlived the killed launcher"
        time.sleep(0.2)
    assert manifest(stage)["status"] == "running"
    assert not (stage / "export").exists()

    p = launch(runs, "killed", tiny_model_dir)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming stage1 from step_" in p.stdout
    assert losses(stage) == losses(reference)  # exact: same data position, RNG, optimizer, scheduler
    assert manifest(stage)["summary"]["final_loss"] == manifest(reference)["summary"]["final_loss"]


def test_kill_during_save_leaves_no_complete_looking_checkpoint(reference, runs, tiny_model_dir):
    stage = runs / "torn" / "stage1"
    p = launch(runs, "torn", tiny_model_dir, env_extra={"R1_FAULT": "during_save:4"})
    assert p.returncode != 0
    assert manifest(stage)["status"] == "failed"
    torn = stage / "checkpoints" / STAGING / "step_00000004"
    assert torn.exists() and not (torn / MARKER).exists()  # DeepSpeed wrote it, but it is not committed
    assert [c.name for c in complete_checkpoints(stage / "checkpoints")] == ["step_00000002"]

    p = launch(runs, "torn", tiny_model_dir)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming stage1 from step_00000002" in p.stdout
    assert losses(stage) == losses(reference)


def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint(reference, runs, tiny_model_dir):
    """The kernel refuses the writes of checkpoint 4 part-way (RLIMIT_FSIZE): one line says which
    checkpoint survived, nothing half-written is left, and the re-run resumes from it exactly."""
    stage = runs / "full" / "stage1"
    p = launch(runs, "full", tiny_model_dir, env_extra={"R1_FAULT": "disk_full:4"})
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: full/stage1: could not write checkpoint step_00000004 in "), last
    assert "(a write was cut short; " in last and "GiB free there)" in last
    assert "checkpoint step_00000002 is intact" in last and "run the same command again" in last
    assert [c.name for c in complete_checkpoints(stage / "checkpoints")] == ["step_00000002"]
    assert not (stage / "checkpoints" / STAGING).exists()
    assert manifest(stage)["status"] == "failed"

    p = launch(runs, "full", tiny_model_dir)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming stage1 from step_00000002" in p.stdout
    assert losses(stage) == losses(reference)


def test_force_reruns_and_keeps_the_old_folder(reference, runs, tiny_model_dir):
    p = launch(runs, "ref", tiny_model_dir, "force=true", "stage.max_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert manifest(reference)["summary"]["steps"] == 2
    old = [d for d in reference.parent.iterdir() if d.name.startswith("stage1.old-")]
    assert len(old) == 1 and (old[0] / "export" / "model.safetensors").exists()


def test_config_typo_fails_before_anything_is_written(runs, tiny_model_dir):
    p = launch(runs, "typo", tiny_model_dir, "stage.lrr=1")
    assert p.returncode == 2 and "stage.lrr" in p.stderr
    assert not (runs / "typo").exists()


def test_missing_parent_stage_says_what_to_run(runs, tiny_model_dir):
    p = launch(runs, "orphan", tiny_model_dir, "stage.name=stage3", "stage.init_from=stage1")
    assert p.returncode == 2 and "make stage-1" in p.stderr


def test_deepspeed_launcher_runs_the_same_stage(runs, tiny_model_dir):
    p = launch(runs, "dslaunch", tiny_model_dir, "launcher=deepspeed", "stage.max_steps=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "with deepspeed" in p.stdout
    assert [s for s, _ in losses(runs / "dslaunch" / "stage1")] == [1, 2]


@pytest.mark.parametrize("zero, dtype", [(2, "fp32"), (3, "bf16")])
def test_two_processes_with_zero_sharding_train_and_export(runs, tiny_model_dir, zero, dtype):
    """gloo on CPU, 2 ranks: ZeRO-2 shards optimizer state and gradients; ZeRO-3 also the weights,
    which the export gathers back into one HF folder."""
    name = f"zero{zero}"
    p = launch(
        runs,
        name,
        tiny_model_dir,
        f"deepspeed=zero{zero}",
        f"model.dtype={dtype}",
        "launcher.nproc=2",
        "stage.max_steps=2",
        "stage.gradient_accumulation_steps=1",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "world 2" in p.stdout and f"zero {zero}" in p.stdout
    curve = losses(runs / name / "stage1")
    assert [s for s, _ in curve] == [1, 2] and all(loss == loss and loss > 0 for _, loss in curve)  # finite

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs / name / "stage1" / "export")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.model.layers[0].mlp.up_proj.weight.shape == base.model.layers[0].mlp.up_proj.weight.shape
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight.float(), base.model.layers[0].mlp.up_proj.weight)


WORLD_TOLERANCE = 1e-4  # relative, on each step's loss: the same global batch reduced in another order


@pytest.mark.parametrize("before, after", [(2, 1), pytest.param(1, 2, marks=pytest.mark.slow)])
def test_a_checkpoint_resumes_on_a_different_number_of_processes(runs, tiny_model_dir, before, after):
    """ZeRO-2 (elastic optimizer layout): killed after step 3 with checkpoint 2 on `before` processes, resumed
    on `after`; the accumulation steps are rescaled so the global batch (2 rows) stays, and every loss
    matches an uninterrupted run on `before` processes within WORLD_TOLERANCE."""
    common = ["deepspeed=zero2", "stage.max_steps=4", "stage.gradient_accumulation_steps=" + str(2 // before)]
    ref = launch(runs, f"ws{before}ref", tiny_model_dir, *common, f"launcher.nproc={before}")
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    name = f"ws{before}to{after}"
    killed = launch(
        runs, name, tiny_model_dir, *common, f"launcher.nproc={before}", env_extra={"R1_FAULT": "after_step:3"}
    )
    assert killed.returncode != 0
    resumed = launch(runs, name, tiny_model_dir, *common, f"launcher.nproc={after}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (
        f"written by {before} processes x {2 // before} accumulation steps on {after} x {2 // after}" in resumed.stdout
    )
    got, want = losses(runs / name / "stage1"), losses(runs / f"ws{before}ref" / "stage1")
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]
    for (step, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=WORLD_TOLERANCE), f"step {step}"


def test_a_zero3_checkpoint_is_refused_at_another_world_size_with_the_way_out(runs, tiny_model_dir):
    common = ["deepspeed=zero3", "stage.max_steps=4", "stage.gradient_accumulation_steps=1"]
    killed = launch(runs, "z3ws", tiny_model_dir, *common, "launcher.nproc=2", env_extra={"R1_FAULT": "after_step:3"})
    assert killed.returncode != 0
    p = launch(runs, "z3ws", tiny_model_dir, *common, "launcher.nproc=1")
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert "written by 2 processes under ZeRO-3" in last and "launcher.nproc=2" in last, last
