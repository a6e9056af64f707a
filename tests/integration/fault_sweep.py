"""Fault-injection harness: kill a stage many times, resume it each time, and compare with a run that
was never killed.

A sweep of one stage:
1. a reference run, uninterrupted (its wall time T bounds the kill delays);
2. the stage's named in-process kill points (`R1_FAULT=<point>:<n>`: inside a checkpoint write, a
   rollout, a weight sync, a shard write, the export, a manifest update; see `pipeline.run.faults`);
3. SIGKILLs of the whole job from outside at random delays in [0, T], drawn from a printed seed, each
   attempt resuming what the previous one left, until `kills` kills have landed (a run that finishes
   before its kill is followed by a fresh run, so every kill hits something);
4. after every kill: the manifest parses, a checkpoint marked COMPLETE holds its files, and an
   export is either absent or whole (a readable safetensors file beside its config);
5. the final resume: the stage's outputs (metrics without timings, datasets, eval rows, the exported
   weights) equal the reference's, exactly.

Replay a failure with the seed it printed: `R1_FAULT_SEED=<seed> make test-slow ARGS="-k <stage>"`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO, launch_command, stage_env

from pipeline.train.checkpoint import MARKER

TIMING_WORDS = ("seconds", "tok_per_s", "tok_s", "time_")  # metric names that hold wall-clock figures


@dataclass
class StageCase:
    stage: str  # the launcher's stage=<name>
    overrides: list[str]
    named: list[str] = field(default_factory=list)  # in-process kill points, `point:n`
    folder: str = ""  # the stage's sub-folder when it differs from `stage`
    prepare: Callable[[Path], None] | None = None  # called with each run's folder before its first attempt

    def dir(self, runs: Path, run: str) -> Path:
        return runs / run / (self.folder or self.stage)


@dataclass
class SweepReport:
    stage: str
    seed: int
    kills: list[str] = field(default_factory=list)  # what was killed: "named after_step:2", "t=12.3s"
    runs: int = 0  # victim runs (a new one starts when an attempt finished before its kill)
    resumed_exactly: int = 0  # victim runs whose outputs equal the reference's


def _start(case: StageCase, runs: Path, run: str, fault: str | None = None) -> subprocess.Popen:
    if case.prepare is not None and not (runs / run).exists():
        (runs / run).mkdir(parents=True)
        case.prepare(runs / run)
    return subprocess.Popen(
        launch_command(case.stage, runs, run, *case.overrides),
        cwd=REPO,
        env=stage_env(fault),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 900) -> int:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    proc.stderr_tail = (err or "")[-3000:]
    return proc.returncode


def run_to_end(case: StageCase, runs: Path, run: str) -> float:
    t0 = time.time()
    proc = _start(case, runs, run)
    rc = _finish(proc)
    assert rc == 0, f"{case.stage} run {run} failed (exit {rc}): {proc.stderr_tail}"
    return time.time() - t0


def kill_after(case: StageCase, runs: Path, run: str, delay: float) -> bool:
    """Start an attempt and SIGKILL its whole process group after `delay` s; False if it finished first."""
    proc = _start(case, runs, run)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        _wait_gone(case.dir(runs, run))
        return True
    _, err = proc.communicate()
    assert proc.returncode == 0, f"{case.stage} attempt failed without a kill: {(err or '')[-3000:]}"
    return False


def _wait_gone(folder: Path, limit: float = 30) -> None:
    """The job's processes (they carry the stage's config path) must die with the launcher."""
    deadline = time.time() + limit
    while subprocess.run(["pgrep", "-f", str(folder / "config.yaml")], capture_output=True).returncode == 0:
        assert time.time() < deadline, f"processes of {folder} outlived the kill"
        time.sleep(0.2)


def check_left_consistent(folder: Path) -> None:
    """What a kill may leave: nothing half-written that looks complete."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        json.loads(manifest.read_text())  # never half a manifest
    ckpts = folder / "checkpoints"
    for ck in ckpts.iterdir() if ckpts.exists() else []:
        if (ck / MARKER).exists():
            json.loads((ck / MARKER).read_text())
            assert any(ck.rglob("*model_states.pt")), f"{ck} is marked complete without model states"
    for export in folder.rglob("export"):  # not `export.tmp`, which a kill may leave half-written
        if export.is_dir():
            _check_export(export)


def _check_export(export: Path) -> None:
    from safetensors import safe_open

    assert (export / "config.json").exists(), f"{export} has no config.json"
    weights = sorted(export.glob("*.safetensors"))
    assert weights, f"{export} has no weights"
    for w in weights:
        with safe_open(str(w), "pt") as f:
            assert list(f.keys()), f"{w} is empty"


def outputs(folder: Path) -> dict:
    """What an exact resume must reproduce: metrics without timings, every JSONL dataset / eval row file
    and results.json, and the exported tensors."""
    out: dict = {}
    for path in sorted(folder.rglob("*.jsonl")) + sorted(folder.rglob("results.json")):
        rel = str(path.relative_to(folder))
        if "wandb" in rel or rel.startswith("checkpoints") or ".old-" in rel:
            continue
        text = path.read_text()
        rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
        out[rel] = _strip_timing(rows)
    for w in sorted(folder.glob("export/*.safetensors")):
        from safetensors.torch import load_file

        out[str(w.relative_to(folder))] = {k: v.float().sum().item() for k, v in load_file(w).items()}
        out[str(w.relative_to(folder)) + ":bytes"] = _digest(w)
    return out


def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not any(word in k for word in TIMING_WORDS)}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def sweep(case: StageCase, runs: Path, kills: int, seed: int, compare: Callable[[dict, dict], None]) -> SweepReport:
    """Named points, then `kills` random external kills; every victim run must end equal to the reference."""
    print(f"fault sweep {case.stage}: seed {seed} (replay: R1_FAULT_SEED={seed})", flush=True)
    rng = random.Random(seed)
    t_ref = run_to_end(case, runs, "ref")
    reference = outputs(case.dir(runs, "ref"))
    report = SweepReport(case.stage, seed)

    def finish_victim(run: str) -> None:
        run_to_end(case, runs, run)
        compare(outputs(case.dir(runs, run)), reference)
        report.resumed_exactly += 1

    for n, point in enumerate(case.named):
        run = f"named{n}"
        proc = _start(case, runs, run, fault=point)
        rc = _finish(proc)
        assert rc != 0, f"{case.stage}: fault {point} never fired (the run completed)"
        check_left_consistent(case.dir(runs, run))
        report.kills.append(f"named {point}")
        report.runs += 1
        finish_victim(run)

    victim, landed = 0, 0
    while landed < kills:
        run = f"rand{victim}"
        delay = rng.uniform(0.0, t_ref)
        if kill_after(case, runs, run, delay):
            landed += 1
            report.kills.append(f"t={delay:.1f}s")
            check_left_consistent(case.dir(runs, run))
        else:  # this attempt completed: check it, then kill a fresh run
            compare(outputs(case.dir(runs, run)), reference)
            report.resumed_exactly += 1
            report.runs += 1
            victim += 1
    if (case.dir(runs, f"rand{victim}")).exists():
        report.runs += 1
        finish_victim(f"rand{victim}")
    print(
        f"fault sweep {case.stage}: {len(report.kills)} kills over {report.runs} runs, "
        f"{report.resumed_exactly} resumed exactly (seed {seed})",
        flush=True,
    )
    return report


def exact(got: dict, want: dict) -> None:
    assert set(got) == set(want), f"files differ: {sorted(set(got) ^ set(want))}"
    for key in want:
        assert got[key] == want[key], f"{key} differs from the uninterrupted run"
