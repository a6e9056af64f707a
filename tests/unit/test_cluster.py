"""Several nodes: the exact commands of a 2-node x 8-GPU job (dry run), the Slurm script, the checks."""

from __future__ import annotations

import pytest

from pipeline.run import launch
from pipeline.run.config import ConfigError, compose

JOB = [
    "stage=stage1",
    "launcher.nnodes=2",
    "launcher.nproc=8",
    "launcher.accelerator=cuda",
    "launcher.master_addr=node0",
    "launcher.master_port=29500",
]


def test_a_dry_run_prints_every_nodes_commands_and_starts_nothing(tmp_path, base_dir, capsys):
    rc = launch.launch([*JOB, f"runs_dir={tmp_path}", "run_name=big", "launcher.dry_run=true"])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "big").exists()
    assert "2 node(s) x 8 x cuda" in out
    for node in (0, 1):
        torchrun = (
            f"-m torch.distributed.run --nnodes 2 --nproc_per_node 8 --node_rank {node} --master_addr node0 "
            f"--master_port 29500 -m stages.stage1_sft --config {tmp_path}/big/stage1/config.yaml"
        )
        assert torchrun in out, out
        assert "-m pipeline.run.launch stage=stage1 launcher.nnodes=2" in out
        assert f"launcher.node_rank={node}\n" in out


def test_a_rendezvous_endpoint_replaces_the_static_master(tmp_path, base_dir, capsys):
    rc = launch.launch(
        [*JOB, f"runs_dir={tmp_path}", "run_name=el", "launcher.rdzv_endpoint=node0:29400", "launcher.dry_run=true"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "--rdzv_backend c10d --rdzv_endpoint node0:29400 --rdzv_id el-stage1" in out
    assert "--node_rank" not in out


def test_the_slurm_script_runs_one_launcher_per_node(tmp_path, base_dir, capsys):
    rc = launch.launch(
        ["stage=stage1", "launcher=slurm", "launcher.nnodes=2", "launcher.nproc=8", "launcher.accelerator=cuda"]
        + [f"runs_dir={tmp_path}", "run_name=sl", "launcher.slurm.partition=gpu", "launcher.dry_run=true"]
        + ["stage.optim.lr=1e-5"]
    )
    script = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "sl").exists()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8"):
        assert line in script
    assert "#SBATCH --partition=gpu" in script
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    for part in ("stage=stage1", "stage.optim.lr=1e-5", "launcher=torchrun", "launcher.nnodes=2", "launcher.nproc=8"):
        assert part in srun
    assert "launcher.master_port=29500" in srun and "launcher.node_rank=$SLURM_NODEID" in srun
    assert "launcher=slurm" not in srun and "dry_run" not in srun


def test_writing_the_slurm_script_without_submitting_it(tmp_path, base_dir, capsys):
    rc = launch.launch(
        ["stage=stage1", "launcher=slurm", "launcher.nnodes=2", f"runs_dir={tmp_path}", "run_name=w"]
        + ["launcher.slurm.submit=false"]
    )
    script = tmp_path / "w" / "stage1" / "slurm" / "job.sbatch"
    assert rc == 0 and script.exists() and f"sbatch {script}" in capsys.readouterr().out
    assert "--gpus-per-node" not in script.read_text()  # CPU nodes


@pytest.mark.parametrize(
    "over, key",
    [
        (["launcher.nnodes=2"], "launcher.master_port"),
        (["launcher.nnodes=2", "launcher.node_rank=2", "launcher.master_port=1"], "launcher.node_rank"),
        (["launcher.nnodes=0"], "launcher.nnodes"),
        (["launcher=deepspeed", "launcher.nnodes=2", "launcher.master_port=1"], "launcher.hostfile"),
    ],
)
def test_multi_node_settings_that_cannot_meet_are_refused(tmp_path, over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([f"runs_dir={tmp_path}", *over])
