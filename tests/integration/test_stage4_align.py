"""Reward-model training and stage-4 for real through the launcher, on the tiny model: RMs learn the
embedded preference sets (held-out accuracy checked), RM training and stage-4 resume exactly after a
kill, and stage-4 routes general prompts to the reward models only in its last steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RL_TIMING, TINY_TASK, launch_stage

from pipeline.data.preferences import EVASIVE, embedded_helpfulness

pytestmark = pytest.mark.integration
pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")

REPO = Path(__file__).resolve().parents[2]
TIMING = RL_TIMING | {"time_score/reasoning", "time_score/general"}


def launch(runs: Path, name: str, stage: str, *args: str, fault: str | None = None):
    return launch_stage(stage.removeprefix("stage="), runs, name, *args, fault=fault)


def metrics(stage: Path, drop=()) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (stage / "metrics.jsonl").read_text().splitlines()
    ]


def rm_args(model: Path, stage: str, data: Path) -> list[str]:
    args = [f"stage={stage}", f"stage.init_from={model}", "stage.epochs=3", "stage.optim.lr=3e-4", "stage.save_every=4"]
    return args + ([f"stage.data_path={data}"] if stage == "rm_helpful" else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs4")


@pytest.fixture(scope="module")
def helpful_pairs(runs) -> Path:
    """The embedded pairs a 2-layer random-init model can learn: answers against evasive non-answers and
    trailing-off fragments (telling an off-topic answer apart needs a pretrained model; the
    embedded default's RM is measured on all four kinds)."""
    path = runs / "pairs.jsonl"
    rows = [r for r in embedded_helpfulness() if r["rejected"] in EVASIVE or r["rejected"].endswith(" ...")]
    rows = rows[:90]  # the first ~50 prompts' pairs: the size this test was timed at
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rms(runs, tiny_model_dir, helpful_pairs):
    for stage in ("rm_helpful", "rm_safety"):
        p = launch(runs, "r", *rm_args(tiny_model_dir, stage, helpful_pairs))
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return runs / "r"


@pytest.mark.parametrize("stage", ["rm_helpful", "rm_safety"])
def test_reward_models_learn_their_held_out_preferences(rms, stage):
    manifest = json.loads((rms / stage / "manifest.json").read_text())
    s = manifest["summary"]
    assert manifest["status"] == "complete" and s["heldout_rows"] >= 10
    assert s["heldout_accuracy_last"] >= 0.85, s
    assert s["heldout_accuracy_last"] > s["heldout_accuracy_first"], s
    assert (Path(manifest["outputs"]["export"]) / "model.safetensors").exists()


def test_reward_model_training_resumes_exactly(rms, runs, tiny_model_dir, helpful_pairs):
    args = rm_args(tiny_model_dir, "rm_helpful", helpful_pairs)
    p = launch(runs, "rk", *args, fault="after_step:6")
    assert p.returncode != 0
    p = launch(runs, "rk", *args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    drop = {"step_seconds"}
    assert metrics(runs / "rk" / "rm_helpful", drop) == metrics(rms / "rm_helpful", drop)


def stage4_args(model: Path, rms: Path) -> list[str]:
    return [
        "stage=stage4",
        f"stage.init_from={model}",
        "stage.steps=4",
        "stage.prompts_per_step=2",
        "stage.group_size=4",
        "stage.general_prompts_per_step=2",
        "stage.general_last_steps=2",
        f"stage.reward_models.helpfulness={rms / 'rm_helpful' / 'export'}",
        f"stage.reward_models.harmlessness={rms / 'rm_safety' / 'export'}",
        "stage.rollout.max_new_tokens=32",
        "stage.eval_every=4",
        "stage.save_every=2",
        "stage.optim.lr=1e-4",
        "stage.watch_window=2",
        "data.num_examples=16",
        "data.eval_examples=4",
        *TINY_TASK,
    ]


@pytest.fixture(scope="module")
def stage4(runs, rms, warm_tiny_model_dir):
    p = launch(runs, "s4", *stage4_args(warm_tiny_model_dir, rms))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return runs / "s4" / "stage4"


def test_stage4_routes_general_prompts_to_reward_models_in_the_last_steps(stage4):
    m = metrics(stage4)
    assert [r["step"] for r in m] == [0, 1, 2, 3, 4]
    for r in m[1:3]:  # before the preference phase: reasoning prompts and rule rewards only
        assert "reward/helpfulness" not in r and "reward/accuracy" in r
    for r in m[3:]:
        assert r["samples/general"] == 8 and r["samples/reasoning"] == 8
        for name in ("helpfulness", "harmlessness"):
            assert 0.0 <= r[f"reward/{name}_min"] <= r[f"reward/{name}"] <= r[f"reward/{name}_max"] <= 1.0
        assert "reward/accuracy" in r and "time_score/general" in r
    assert "watch/rm_up_acc_down" in m[4] and "watch/len_ratio" in m[4]
    for r in (m[0], m[4]):  # the held-out general prompts, scored by both RMs at each eval
        assert 0.0 <= r["eval/rm/helpfulness"] <= 1.0 and 0.0 <= r["eval/rm/harmlessness"] <= 1.0
    manifest = json.loads((stage4 / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["kind"] == "align"
    s = manifest["summary"]
    assert s["heldout_rm_helpfulness_n"] == 32 and s["heldout_rm_test"] == "sign_exact"
    assert s["heldout_rm_helpfulness_before"] == pytest.approx(m[0]["eval/rm/helpfulness"])
    assert s["heldout_rm_helpfulness_after"] == pytest.approx(m[4]["eval/rm/helpfulness"])
    assert 0.0 < s["heldout_rm_harmlessness_p"] <= 1.0
    assert 0.0 < s["heldout_rm_helpfulness_permutation_p"] <= 1.0
    rows = [json.loads(line) for line in (stage4 / "eval" / "general_step_00004.jsonl").read_text().splitlines()]
    assert (
        s["heldout_rm_helpfulness_sampled_n"] == 32 and 0.0 < s["heldout_rm_helpfulness_sampled_permutation_p"] <= 1.0
    )
    assert s["heldout_general_clean_after"] == pytest.approx(sum(r["clean"] for r in rows) / 32)
    for r in rows:  # the gate: an unclean summary earns 0, a clean one the RM's own score
        assert r["helpfulness"] == (r["helpfulness_raw"] if r["clean"] else 0.0)
    assert len(rows) == 32 and all(r["greedy"] is not None for r in rows)
    assert set(manifest["reward_models"]) == {"helpfulness", "harmlessness"}


def test_stage4_resumes_exactly_after_a_kill(stage4, runs, rms, warm_tiny_model_dir):
    p = launch(runs, "s4k", *stage4_args(warm_tiny_model_dir, rms), fault="after_step:3")
    assert p.returncode != 0
    p = launch(runs, "s4k", *stage4_args(warm_tiny_model_dir, rms))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert metrics(runs / "s4k" / "stage4", TIMING) == metrics(stage4, TIMING)


@pytest.mark.parametrize("zero", [3, pytest.param(2, marks=pytest.mark.slow)])
def test_stage4_on_two_processes_samples_what_one_process_samples(runs, rms, warm_tiny_model_dir, stage4, zero):
    """Issue 15: stage-4 data-parallel under ZeRO-2 and ZeRO-3 (beta > 0 under ZeRO-3: the reference
    model is built apart from the partitioned engine); step 1 samples and scores the same batch as one
    process, reward models included."""
    extra = [f"deepspeed=zero{zero}", "launcher.nproc=2"] + (["stage.beta=0.001"] if zero == 3 else [])
    p = launch(runs, f"s4_two_z{zero}", *stage4_args(warm_tiny_model_dir, rms), *extra)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    one, two = metrics(stage4), metrics(runs / f"s4_two_z{zero}" / "stage4")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for key in ("reward", "reward/accuracy", "response_len_mean", "samples"):
        assert two[1][key] == pytest.approx(one[1][key], rel=1e-6), key
    assert two[3]["samples/general"] == one[3]["samples/general"] == 8
    for key in ("eval/rm/helpfulness", "eval/rm/harmlessness", "eval/greedy_accuracy"):  # sharded evals, gathered
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-4), key
    if zero == 3:
        assert all(r["kl"] >= 0 for r in two[2:]) and two[-1]["kl"] > 0  # the reference is exercised
