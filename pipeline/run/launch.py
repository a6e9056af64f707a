"""Start one stage as its own distributed DeepSpeed job.

    python -m pipeline.run.launch stage=stage1 [any.config.key=value ...]
    make stage-1 ARGS="stage.optim.lr=5e-5 run_name=exp1"

1. compose + validate the config (a typo fails here, naming the key);
2. a stage whose manifest says `complete` is skipped unless `force=true` (the old folder is moved
   aside to `<stage>.old-<time>`, never deleted);
3. the stage's inputs are checked (parent export via its manifest, base model) - a missing one is
   an error saying what to run first;
4. the resolved config is written to `runs/<run>/<stage>/config.yaml` and the stage module is
   started with torchrun (or the `deepspeed` launcher) on `launcher.nproc` processes.

Re-running after a crash or a kill resumes: the stage module picks up its newest complete
checkpoint. The exit code is the stage's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from pipeline.run import cluster, errors, memory
from pipeline.run import config as config_lib
from pipeline.run import folders as run_lib
from pipeline.run.paths import REPO_ROOT
from pipeline.train.dist import die_with_parent

# Keys that may change between an interrupted attempt and its resume without changing the result.
_RESUME_SAFE = ("logger", "launcher", "force")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerator(cfg) -> tuple[str, int]:
    import torch

    acc = cfg.launcher.accelerator
    if acc == "auto":
        acc = "cuda" if torch.cuda.is_available() else "cpu"
    remote = cfg.launcher.dry_run or cfg.launcher.kind == "slurm"  # the GPUs are on other machines
    if acc == "cuda" and not torch.cuda.is_available() and not remote:
        raise config_lib.ConfigError("config key 'launcher.accelerator': cuda requested but no GPU is visible")
    nproc = cfg.launcher.nproc or (torch.cuda.device_count() if acc == "cuda" else 1)
    if nproc < 1:
        raise config_lib.ConfigError("config key 'launcher.nproc': no GPU visible here; set it to the GPUs per node")
    return acc, nproc


def command(cfg, config_path: Path, acc: str, nproc: int) -> tuple[list[str], dict]:
    port = cfg.launcher.master_port or _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if acc == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        threads = cfg.launcher.omp_threads or max(1, (os.cpu_count() or 1) // nproc)
        env["OMP_NUM_THREADS"] = str(threads)
        if cfg.stage.kind == "sft":
            # Keep freed activation buffers in glibc's heap instead of unmapping them every step:
            # page-faulting fresh memory back in cost ~20% of CPU step time (scripts/bench_sft_step.py).
            # Not for stages that also run vLLM: its allocations interleaved with the trainer's
            # fragment a never-trimmed heap, and a stage-2 run grew to 18 GB and was OOM-killed.
            env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 40))
            env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 40))
    module_args = ["--config", str(config_path)]
    launcher = cfg.launcher
    if launcher.kind in ("torchrun", "slurm"):  # a Slurm task runs torchrun on its node
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(launcher.nnodes)]
        cmd += ["--nproc_per_node", str(nproc)]
        if launcher.rdzv_endpoint:  # c10d rendezvous: node ranks are assigned as nodes join
            cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", launcher.rdzv_endpoint]
            cmd += ["--rdzv_id", f"{cfg.run_name}-{cfg.stage.name}"]
        else:
            cmd += ["--node_rank", str(launcher.node_rank), "--master_addr", launcher.master_addr]
            cmd += ["--master_port", str(port)]
        cmd += ["-m", cfg.stage.module, *module_args]
    else:
        # --no_local_rank: the stage reads LOCAL_RANK from the environment, as under torchrun
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_addr", launcher.master_addr]
        cmd += ["--master_port", str(port), "--no_local_rank"]
        if launcher.hostfile:  # several nodes, started from this one over ssh/pdsh
            cmd += ["--hostfile", launcher.hostfile, "--num_nodes", str(launcher.nnodes)]
        cmd += ["--module"]
        cmd += ["--num_gpus", str(nproc)] if acc == "cuda" else ["--num_accelerators", str(nproc)]
        cmd += [cfg.stage.module, *module_args]
    return cmd, env


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if not prefix and k in _RESUME_SAFE:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, key + ".")
        elif a != b:
            keys.append(key)
    return keys


def check_inputs(cfg, nproc: int = 1) -> None:
    """Every model the stage reads must exist (and a parent stage be complete), a data file must parse,
    and the work must split over the processes, before anything starts."""
    for key in ("init_from", "sft_init_from"):  # stage-3 samples with one model and fine-tunes another
        if key in cfg.stage:
            run_lib.resolve_init(cfg, key)
    for model in cfg.stage.get("models", []):  # evaluation: every named model must exist
        if model != "auto":
            run_lib.resolve_source(cfg, model, "stage.models", cfg.stage.name)
    for reward, model in cfg.stage.get("reward_models", {}).items():  # stage-4's reward models
        if reward in cfg.stage.rm_rewards:
            run_lib.resolve_source(cfg, model, f"stage.reward_models.{reward}", cfg.stage.name)
    if cfg.stage.kind in ("sft", "distill") and cfg.data.source == "file":
        from pipeline.data.sources import load_rows

        load_rows(cfg.data)  # a malformed row fails here, naming file and line, not inside the job
    tp = OmegaConf.select(cfg, "stage.rollout.tensor_parallel_size", default=1)
    if nproc > 1 and nproc % tp:
        raise config_lib.ConfigError(
            f"config key 'stage.rollout.tensor_parallel_size': {tp} GPUs per vLLM engine do not divide the "
            f"{nproc} processes"
        )
    if cfg.stage.kind in ("grpo", "align") and cfg.stage.prompts_per_step % nproc:
        raise config_lib.ConfigError(
            f"config key 'stage.prompts_per_step': {cfg.stage.prompts_per_step} prompts per step do not "
            f"split over {nproc} processes; use a multiple of {nproc}"
        )


def skip_or_set_aside(cfg, folder: Path, name: str) -> bool:
    """True when the stage is already complete and nothing is to be done; with force=true the finished
    folder is moved aside (never deleted) and the stage runs again."""
    if not run_lib.is_complete(folder) or cfg.stage.kind == "eval":  # evaluation is incremental: always runs
        return False
    if not cfg.force:
        summary = (run_lib.read_manifest(folder) or {}).get("summary", {})
        print(
            f"{name} is already complete ({folder}); nothing to do. Pass force=true to run it again. Summary: {summary}"
        )
        return True
    aside = folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(folder, aside)
    print(f"force=true: moved the finished {name} to {aside}")
    return False


def write_config(cfg, folder: Path, name: str) -> Path:
    """The resolved config the stage reads, written atomically; a resume with changed keys is flagged."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    if config_path.exists():
        changed = _changed_keys(OmegaConf.to_container(OmegaConf.load(config_path)), config_lib.to_plain(cfg))
        if changed:
            print(
                f"warning: resuming {name} with a changed config ({', '.join(changed)}); "
                "the result may differ from an uninterrupted run",
                file=sys.stderr,
            )
    tmp = config_path.with_suffix(".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, config_path)
    return config_path


def run_job(cmd: list[str], env: dict, folder: Optional[Path]) -> int:
    """Start the distributed job in its own session; Ctrl-C / kill reach the whole job, not just the
    launcher. The peak memory of its process tree is printed, and kept in `folder`'s manifest (None:
    a follower node, which leaves the stage folder to node 0)."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, start_new_session=True, preexec_fn=die_with_parent)
    monitor = memory.PeakTreeMemory(proc.pid).start()

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    rc = proc.wait()
    record_peak_memory(folder, monitor.stop(), monitor.processes_at_peak)
    return rc


def record_peak_memory(folder: Optional[Path], peak_gib: float, processes: int) -> None:
    print(f"peak memory of the job's process tree: {peak_gib:.2f} GiB RSS over {processes} processes", flush=True)
    manifest = run_lib.read_manifest(folder) if folder is not None else None
    if manifest is not None and peak_gib >= manifest.get("peak_rss_gib", 0.0):  # the largest over attempts
        run_lib.update_manifest(folder, peak_rss_gib=round(peak_gib, 3), peak_rss_processes=processes)


def launch(overrides: list[str]) -> int:
    try:
        cfg = config_lib.compose(overrides)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = config_lib.stage_dir(cfg)
    name = f"{cfg.run_name}/{cfg.stage.name}"
    launcher = cfg.launcher
    if launcher.node_rank > 0:  # a follower node: node 0 owns the folder (set-aside, manifest, errors)
        return follow(cfg, folder, name)
    if not launcher.dry_run and skip_or_set_aside(cfg, folder, name):
        return 0
    try:
        acc, nproc = _accelerator(cfg)
        check_inputs(cfg, nproc * launcher.nnodes)
    except errors.USER_ERRORS as e:
        print(f"error: {errors.one_line(e)}", file=sys.stderr)
        return errors.USER_ERROR_EXIT
    if launcher.kind == "slurm":
        return cluster.submit_slurm(cfg, overrides, folder, acc, nproc)
    if launcher.dry_run:
        return dry_run(cfg, overrides, folder, acc, nproc)
    cmd, env = command(cfg, write_config(cfg, folder, name), acc, nproc)
    env[errors.STAGE_DIR_ENV] = str(folder)
    errors.take_error(folder)  # a previous attempt's, already reported
    where = f"{launcher.nnodes} nodes x {nproc}" if launcher.nnodes > 1 else str(nproc)
    print(f"launching {name} on {where} x {acc} with {launcher.kind}: {' '.join(cmd[2:])}", flush=True)
    rc = run_job(cmd, env, folder)
    if rc != 0:
        user_error = errors.take_error(folder)
        manifest = run_lib.read_manifest(folder)
        if manifest and manifest.get("status") == "running":
            run_lib.update_manifest(folder, status="failed", exit_code=rc, error=user_error)
        if user_error:  # bad input: resuming cannot help, so no resume hint; the error is the last line
            print(f"error: {name}: {user_error}", file=sys.stderr)
            return errors.USER_ERROR_EXIT
        print(
            f"{name} failed (exit code {rc}); run the same command again to resume from its last checkpoint",
            file=sys.stderr,
        )
    return rc


def follow(cfg, folder: Path, name: str) -> int:
    """Node `launcher.node_rank` > 0 of a multi-node job: join node 0's job. Its config goes to a local
    file (node 0 owns the stage folder); a complete stage is skipped unless force=true asks node 0 to
    run it again."""
    import tempfile

    if run_lib.is_complete(folder) and not cfg.force:
        print(f"{name} is already complete ({folder}); nothing to do on node {cfg.launcher.node_rank}")
        return 0
    acc, nproc = _accelerator(cfg)
    config_path = Path(tempfile.mkdtemp(prefix="r1-node-")) / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    cmd, env = command(cfg, config_path, acc, nproc)
    env[errors.STAGE_DIR_ENV] = str(folder)
    if cfg.launcher.dry_run:
        print(" ".join(cmd))
        return 0
    print(f"joining {name} as node {cfg.launcher.node_rank} of {cfg.launcher.nnodes}: {' '.join(cmd[2:])}", flush=True)
    return run_job(cmd, env, None)


def dry_run(cfg, overrides: list[str], folder: Path, acc: str, nproc: int) -> int:
    """Print what every node runs: the launcher line a user types there, and the job it starts."""
    launcher = cfg.launcher
    print(f"# {cfg.run_name}/{cfg.stage.name}: {launcher.nnodes} node(s) x {nproc} x {acc} (dry run: nothing started)")
    for node in range(launcher.nnodes):
        node_cfg = OmegaConf.merge(cfg, {"launcher": {"node_rank": node}})
        cmd, _ = command(node_cfg, folder / "config.yaml", acc, nproc)
        print(f"# node {node}: type\n{cluster.node_launch_line(overrides, node)}\n# which starts\n{' '.join(cmd)}")
        if launcher.kind == "deepspeed" and launcher.hostfile:
            break  # DeepSpeed's runner on node 0 starts every node from the hostfile
    return 0


def usage() -> str:
    from pipeline.run import registry

    stages = "\n".join(f"  {s.name:11s} {s.make_target}" for s in registry.STAGES)
    return f"{__doc__.strip()}\n\nStages (stage=<name>):\n{stages}\n"


def main() -> int:
    if any(arg in ("-h", "--help", "help") for arg in sys.argv[1:]):
        print(usage())
        return 0
    return launch(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
