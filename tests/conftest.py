"""Shared fixtures. The tiny model reuses the real SmolLM2 tokenizer from the setup cache, so
`make setup` (which `make test` runs first) must have prepared the base model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.run.paths import base_model_dir  # noqa: E402

# fp32 unless a test asks otherwise: model.dtype=auto picks bf16 on CPUs where a calibration finds it
# faster, and the tests' exact-resume and logprob-gap bounds are fp32 figures
QUIET = ("logger=none", "logger.progress=false", "model.dtype=fp32")


def launch_command(stage: str, runs: Path, run_name: str, *overrides: str) -> list[str]:
    """The command `make stage-N ARGS=...` runs, for stage `stage` of run `run_name` under `runs`."""
    return [
        sys.executable,
        "-m",
        "pipeline.run.launch",
        f"stage={stage}",
        f"run_name={run_name}",
        f"runs_dir={runs}",
        *QUIET,
        *overrides,
    ]


def stage_env(fault: str | None = None, extra: dict | None = None) -> dict:
    """The environment without an inherited fault; `fault` (`point:step`) kills the stage there."""
    env = {k: v for k, v in os.environ.items() if k != "R1_FAULT"}
    if fault:
        env["R1_FAULT"] = fault
    env.update(extra or {})
    return env


def launch_stage(
    stage: str,
    runs: Path,
    run_name: str,
    *overrides: str,
    fault: str | None = None,
    env_extra: dict | None = None,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """Run one stage through the launcher, as a user would, and wait for it (output captured)."""
    return subprocess.run(
        launch_command(stage, runs, run_name, *overrides),
        cwd=REPO,
        env=stage_env(fault, env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def base_dir() -> Path:
    d = base_model_dir()
    if not (d / "tokenizer.json").exists():
        pytest.fail(f"base model not prepared at {d}; run `make setup` first", pytrace=False)
    return d


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, base_dir, tokenizer) -> Path:
    """A 2-layer, 128-wide Llama with SmolLM2's tokenizer and chat template, random weights."""
    from pipeline.run.model_prep import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("R1_FAULT", raising=False)
    return os.environ


def warm_start(
    model_dir: Path,
    out: Path,
    tokenizer,
    steps: int,
    seed: int = 0,
    p_correct: float = 0.0,
    lr: float = 3e-3,
    task: list[str] | None = None,
    decoy: str | None = None,
) -> Path:
    """Teach a tiny random model the R1 format with plain SFT, so an RL test starts from a policy that
    answers in the expected place (a random-token policy never earns any reward at all). A fraction
    `p_correct` of the SFT answers is the true sum, the rest random: the policy then puts some mass on
    the right answer and RL has something to sharpen. `decoy`: the wrong answers are all this one
    string instead of random numbers. `task`: data overrides (default `TINY_TASK`)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data.packing import collate, tokenize_chat
    from pipeline.data.prompts import load_prompts
    from pipeline.run.config import compose
    from pipeline.train.maths import token_nll_sum

    cfg = compose(["stage=stage2", "data.num_examples=256"] + (TINY_TASK if task is None else task))
    rng = random.Random(seed)
    examples = []
    for r in load_prompts(cfg.data, "train"):
        expr = r["entry"]["metadata"]["expression"]
        wrong = decoy if decoy is not None else rng.randint(0, 18)
        answer = r["answer"] if rng.random() < p_correct else wrong
        reply = f"<think>\n{expr}\n</think>\n\n\\boxed{{{answer}}}"
        messages = [
            {"role": "system", "content": cfg.data.system_prompt},
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": reply},
        ]
        examples.append(tokenize_chat(tokenizer, messages))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        batch = collate([examples[(8 * step + j) % len(examples)] for j in range(8)])
        out_ = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        loss = token_nll_sum(out_.logits, batch["targets"]) / (batch["targets"] != -100).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# wall-clock figures every RL step logs (stage-2 and stage-4): left out when runs are compared exactly
RL_TIMING = frozenset(
    {"time_generate", "time_score", "time_train", "time_sync", "time_sleep_wake", "step_seconds", "rollout_tok_per_s"}
)

# Single-digit sums: a task a 2-layer model can learn by RL in a couple of minutes on CPU.
TINY_TASK = [
    "data.tasks=[chain_sum]",
    "data.task_kwargs={chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}",
]


@pytest.fixture(scope="session")
def warm_tiny_model_dir(tmp_path_factory, tiny_model_dir, tokenizer) -> Path:
    # 60 steps: about half of its samples (T=1) are in format, so GRPO groups have reward variance
    # and the format reward has room to rise
    return warm_start(tiny_model_dir, tmp_path_factory.mktemp("warm-tiny"), tokenizer, steps=60)
