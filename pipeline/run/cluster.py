"""Several nodes: the torchrun / DeepSpeed command for each node, the Slurm script, and the check that
every node sees the run folder.

A job on N nodes is the same launcher command run once on every node, differing only in
`launcher.node_rank`; torchrun on each node starts `launcher.nproc` processes and they meet at
`launcher.master_addr:master_port` (static rendezvous) or at `launcher.rdzv_endpoint` (c10d). Rank 0
alone writes data, checkpoints, manifests and exports, so the run folder must be on a filesystem
every node mounts; `check_shared_folder` proves it at start instead of losing work later.

`launcher=slurm` writes `<stage folder>/slurm/job.sbatch`: one task per node (`srun
--ntasks-per-node=1`), each running the launcher with `launcher=torchrun`, its node rank from
`$SLURM_NODEID` and node 0's host name from the job's node list. `launcher.dry_run=true` prints
every node's command (and the script) and starts nothing.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.run.paths import REPO_ROOT

SLURM_PORT = 29500  # launcher=slurm without launcher.master_port
# overrides the Slurm task sets itself (the rest of the user's command line is passed on unchanged)
_SLURM_OWNED = ("launcher=", "launcher.kind=", "launcher.nnodes=", "launcher.node_rank=", "launcher.master_addr=")
_SLURM_OWNED += ("launcher.master_port=", "launcher.dry_run=", "launcher.slurm.", "launcher.nproc=")


def node_launch_line(overrides: list[str], node_rank: int) -> str:
    """What a user types on node `node_rank` (the same on every node but for the rank)."""
    rest = [o for o in overrides if not o.startswith("launcher.node_rank=") and not o.startswith("launcher.dry_run=")]
    args = " ".join(rest + [f"launcher.node_rank={node_rank}"])
    return f"{sys.executable} -m pipeline.run.launch {args}"


def slurm_script(cfg, overrides: list[str], folder: Path, acc: str, nproc: int) -> str:
    slurm, launcher = cfg.launcher.slurm, cfg.launcher
    gpus = nproc if slurm.gpus_per_node < 0 and acc == "cuda" else max(0, slurm.gpus_per_node)
    port = launcher.master_port or SLURM_PORT
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={cfg.run_name}-{cfg.stage.name}",
        f"#SBATCH --nodes={launcher.nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={slurm.time}",
        f"#SBATCH --output={folder}/slurm/%j.out",
    ]
    lines += [f"#SBATCH --gpus-per-node={gpus}"] if gpus else []
    lines += [f"#SBATCH --cpus-per-task={slurm.cpus_per_task}"] if slurm.cpus_per_task else []
    lines += [f"#SBATCH --partition={slurm.partition}"] if slurm.partition else []
    lines += [f"#SBATCH --account={slurm.account}"] if slurm.account else []
    lines += [f"#SBATCH {opt}" for opt in slurm.extra]
    passed = [o for o in overrides if not o.startswith(_SLURM_OWNED)]
    passed += ["launcher=torchrun", f"launcher.nnodes={launcher.nnodes}", f"launcher.master_port={port}"]
    passed += [f"launcher.nproc={nproc}"]
    task = (
        f"{shlex.quote(sys.executable)} -m pipeline.run.launch {' '.join(shlex.quote(o) for o in passed)} "
        '"launcher.node_rank=$SLURM_NODEID" "launcher.master_addr=$MASTER_ADDR"'
    )
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(str(REPO_ROOT))}",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "# one task per node; each runs the launcher, which starts torchrun with this node's rank",
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
    ]
    return "\n".join(lines) + "\n"


def submit_slurm(cfg, overrides: list[str], folder: Path, acc: str, nproc: int) -> int:
    """Write the sbatch script; print it (dry run), or submit it (`launcher.slurm.submit`)."""
    script = slurm_script(cfg, overrides, folder, acc, nproc)
    if cfg.launcher.dry_run:
        print(f"# {folder}/slurm/job.sbatch (dry run: not written, not submitted)\n{script}", end="")
        return 0
    path = folder / "slurm" / "job.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    if not cfg.launcher.slurm.submit:
        print(f"wrote {path}; submit it with: sbatch {path}")
        return 0
    try:
        wait = ["--wait"] if cfg.launcher.slurm.wait else []
        out = subprocess.run(["sbatch", *wait, str(path)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        print(f"error: launcher=slurm: sbatch is not on PATH; the job script is at {path}", file=sys.stderr)
        return 2
    print((out.stdout + out.stderr).strip())
    if out.returncode == 0:
        print(f"logs: {folder}/slurm/<job id>.out; `make status` shows the stage as it runs")
    return out.returncode


def check_shared_folder(folder: Path, rank: int, local_world: int, world: int) -> None:
    """Collective, on several nodes: a file rank 0 writes in the run folder must be visible on every
    rank; otherwise the run stops at once, naming the host that cannot see it."""
    import torch.distributed as td

    from pipeline.run.folders import InputError

    if world == local_world:  # one node: one filesystem
        return
    probe = folder / ".shared_fs_probe"
    token = ":".join(os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    td.barrier()
    seen = probe.exists() and probe.read_text() == token
    gathered: list = [None] * world
    td.all_gather_object(gathered, (seen, socket.gethostname(), rank))
    td.barrier()
    if rank == 0:
        probe.unlink(missing_ok=True)
    blind = [f"rank {r} on {host}" for ok, host, r in gathered if not ok]
    if blind:
        raise InputError(
            f"runs_dir: {folder} is not on a filesystem every node shares ({', '.join(blind)} cannot see the "
            "file rank 0 wrote there); put runs_dir on a filesystem every node mounts (NFS, Lustre, ...)"
        )
