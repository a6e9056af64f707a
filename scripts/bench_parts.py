"""The measurements of `scripts/bench.py`, one function each; the rollout and HF-Trainer baselines run in
fresh processes (`python scripts/bench_parts.py rollouts|hf_sft <spec.json>`)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import BENCH_DIR, REPO, TRL_VENV, TRL_VERSION, run_measured, write_prompts

PY = sys.executable


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _worker(part: str, spec: dict, name: str) -> tuple[dict, dict]:
    path = BENCH_DIR / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    _, peak = run_measured([PY, str(Path(__file__)), part, str(path)])
    return json.loads(Path(spec["out"]).read_text()), peak


# ---- rollouts: the project's engine path against raw vLLM ------------------------------------------------
def rollouts(settings) -> dict:
    s = settings.sizes
    spec = {
        "model": settings.model,
        "prompts": s.rollout_prompts,
        "group": s.group,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "repeats": s.rollout_repeats,
        "dtype": s.dtype,
        "out": str(BENCH_DIR / f"rollouts-{settings.mode}.json"),
    }
    result, peak = _worker("rollouts", spec, f"rollouts-{settings.mode}")
    result.update(peak)
    print(
        f"rollouts: project {result['project_tok_per_s']:.0f} tok/s, raw vLLM {result['raw_tok_per_s']:.0f} tok/s",
        flush=True,
    )
    return result


def rollout_worker(spec: dict) -> None:
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from pipeline.data.prompts import encode_prompts, load_prompts
    from pipeline.rl.rollout import Sampling, VLLMRollout, request_seed
    from pipeline.run.config import compose

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    cfg = compose(["stage=stage2", "data.tasks=[chain_sum]", f"data.eval_examples={spec['prompts']}"])
    prompts = encode_prompts(tokenizer, load_prompts(cfg.data, "eval"), cfg.data.system_prompt)
    max_len = max(len(p) for p in prompts) + spec["max_tokens"]
    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if spec["dtype"] == "bf16" else "float32"
    stop = [tokenizer.eos_token_id]
    group, temperature, max_tokens = spec["group"], spec["temperature"], spec["max_tokens"]

    project = VLLMRollout(spec["model"], max_model_len=max_len, seed=0, dtype=dtype)
    sampling = Sampling(group, temperature, 1.0, max_tokens)
    project.generate(prompts[:2], sampling, seeds=[1, 2], stop_token_ids=stop)  # warm-up
    project_runs = []
    for r in range(spec["repeats"]):
        start = time.perf_counter()
        outs = project.generate(
            prompts, sampling, seeds=[request_seed(0, r, i) for i in range(len(prompts))], stop_token_ids=stop
        )
        project_runs.append((sum(len(c.token_ids) for g in outs for c in g), time.perf_counter() - start))
    project.close()

    raw = LLM(model=spec["model"], dtype=dtype, seed=0, max_model_len=max_len, enforce_eager=not cuda)
    params = SamplingParams(n=group, temperature=temperature, top_p=1.0, max_tokens=max_tokens, stop_token_ids=stop)
    raw.generate([{"prompt_token_ids": p} for p in prompts[:2]], params, use_tqdm=False)  # warm-up
    raw_runs = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        outs = raw.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        raw_runs.append((sum(len(o.token_ids) for out in outs for o in out.outputs), time.perf_counter() - start))
    rate = lambda runs: sum(t for t, _ in runs) / sum(s for _, s in runs)  # noqa: E731
    result = {
        "sequences": len(prompts) * group,
        "project_runs": project_runs,
        "raw_runs": raw_runs,
        "project_tok_per_s": rate(project_runs),
        "raw_tok_per_s": rate(raw_runs),
    }
    Path(spec["out"]).write_text(json.dumps(result))


# ---- GRPO step: the project's stage-2 against TRL's GRPOTrainer --------------------------------------------
def _prompt_file(settings) -> Path:
    path = BENCH_DIR / f"prompts-{settings.mode}.jsonl"
    write_prompts(path, settings.sizes.prompts_per_step * settings.sizes.steps)
    return path


def grpo_project(settings) -> dict:
    s = settings.sizes
    run = f"bench-{settings.mode}"
    shutil.rmtree(BENCH_DIR / run / "stage2", ignore_errors=True)
    cmd = [
        PY,
        "-m",
        "pipeline.run.launch",
        "stage=stage2",
        f"run_name={run}",
        f"runs_dir={BENCH_DIR}",
        f"stage.init_from={settings.model}",
        f"stage.steps={s.steps}",
        "stage.eval_every=0",
        "stage.save_every=1000",
        "data.tasks=[chain_sum]",
        f"data.num_examples={s.prompts_per_step * s.steps}",
        "stage.rewards={accuracy: 0.0, code: 0.0, format: 1.0, language: 0.0}",
        *settings.overrides(),
    ]
    _, peak = run_measured(cmd)
    records = [json.loads(line) for line in (BENCH_DIR / run / "stage2" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["step"] >= 2]
    result = {
        key: _mean([r[key] for r in steady])
        for key in ("step_seconds", "time_generate", "time_score", "time_train", "time_sync", "rollout_tok_per_s")
    }
    result.update(**peak, steps=len(records), response_len_mean=_mean([r["response_len_mean"] for r in steady]))
    print(
        f"grpo project: {result['step_seconds']:.1f} s/step (generate {result['time_generate']:.1f}, train "
        f"{result['time_train']:.1f}, sync {result['time_sync']:.2f})",
        flush=True,
    )
    return result


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    probe = [str(python), "-c", f"import trl, sys; sys.exit(trl.__version__ != {TRL_VERSION!r})"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    import torch

    print(f"bench: installing TRL {TRL_VERSION} into {TRL_VENV} (once; the project's venv is not touched)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the project's torch (CPU: the local 2.13.0 wheel)
    subprocess.run([*pip, torch_pin], check=True)
    subprocess.run([*pip, f"trl=={TRL_VERSION}", torch_pin], check=True)
    return python


def grpo_trl(settings) -> dict:
    s = settings.sizes
    python = ensure_trl_venv()
    out = BENCH_DIR / f"trl-{settings.mode}.json"
    env = dict(os.environ)
    if settings.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(os.cpu_count() or 1))
    cmd = [
        str(python),
        str(REPO / "scripts" / "bench_trl_grpo.py"),
        "--model",
        settings.model,
        "--prompts",
        str(_prompt_file(settings)),
        "--out",
        str(out),
        "--group",
        str(s.group),
        "--prompts-per-step",
        str(s.prompts_per_step),
        "--max-tokens",
        str(s.max_tokens),
        "--steps",
        str(s.steps),
        "--temperature",
        str(s.temperature),
        "--beta",
        str(s.beta),
        "--lr",
        str(s.lr),
        "--dtype",
        s.dtype,
        "--workdir",
        str(BENCH_DIR / f"trl-{settings.mode}"),
    ]
    _, peak = run_measured(cmd, env=env)
    data = json.loads(out.read_text())
    steady = data["steps"][1:]
    step = _mean([r["step_seconds"] for r in steady])
    generate = _mean([r["generate"] for r in steady])
    result = {
        "step_seconds": step,
        "time_generate": generate,
        "time_train": step - _mean([r["generate_and_score"] for r in steady]),
        "torch_threads": data["torch_threads"],
        **peak,
        "steps": len(data["steps"]),
    }
    lengths = [r["completions/mean_length"] for r in data["log"] if "completions/mean_length" in r][1:]
    result["response_len_mean"] = _mean(lengths)
    print(f"grpo TRL: {step:.1f} s/step (generate {generate:.1f}, train {result['time_train']:.1f})", flush=True)
    return result


# ---- SFT: the packed trainer against a padded HF Trainer on the same rows -------------------------------------
def sft(settings) -> dict:
    s = settings.sizes
    run = f"bench-{settings.mode}"
    shutil.rmtree(BENCH_DIR / run / "stage1", ignore_errors=True)
    cmd = [
        PY,
        "-m",
        "pipeline.run.launch",
        "stage=stage1",
        f"run_name={run}",
        f"runs_dir={BENCH_DIR}",
        f"model.path={settings.model}",
        f"data.num_examples={s.sft_examples}",
        "stage.save_every=0",
        f"model.dtype={s.dtype}",
        f"launcher.accelerator={settings.device}",
        "logger=none",
        "logger.progress=false",
    ]
    _, peak = run_measured(cmd)
    records = [json.loads(line) for line in (BENCH_DIR / run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records
    project = {
        "tok_per_s": sum(r["tokens"] for r in steady) / sum(r["step_seconds"] for r in steady),
        "steps": len(records),
        **peak,
    }
    spec = {
        "model": settings.model,
        "rows": str(BENCH_DIR / run / "stage1" / "data" / "train.jsonl"),
        "batch": s.hf_batch,
        "lr": 1e-4,
        "dtype": s.dtype,
        "out": str(BENCH_DIR / f"hf-sft-{settings.mode}.json"),
    }
    hf, hf_peak = _worker("hf_sft", spec, f"hf-sft-{settings.mode}")
    hf.update(hf_peak)
    print(f"sft: packed {project['tok_per_s']:.0f} tok/s, padded HF Trainer {hf['tok_per_s']:.0f} tok/s", flush=True)
    return {"project": project, "hf_padded": hf}


def hf_sft_worker(spec: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from pipeline.data.packing import IGNORE, tokenize_chat
    from pipeline.data.sources import read_jsonl

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    examples = [tokenize_chat(tokenizer, row["messages"]) for row in read_jsonl(Path(spec["rows"]))]
    dataset = [{"input_ids": e.input_ids, "labels": [IGNORE] + e.targets[:-1]} for e in examples]
    real_tokens: list[int] = []
    padded_tokens: list[int] = []

    def pad(batch):
        width = max(len(x["input_ids"]) for x in batch)
        real_tokens.append(sum(len(x["input_ids"]) for x in batch))
        padded_tokens.append(width * len(batch))
        fill = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return {
            "input_ids": torch.tensor([x["input_ids"] + [fill] * (width - len(x["input_ids"])) for x in batch]),
            "labels": torch.tensor([x["labels"] + [IGNORE] * (width - len(x["labels"])) for x in batch]),
            "attention_mask": torch.tensor(
                [[1] * len(x["input_ids"]) + [0] * (width - len(x["input_ids"])) for x in batch]
            ),
        }

    step_seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_seconds.append(time.perf_counter() - self.start)

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(BENCH_DIR / "hf-sft-out"),
        per_device_train_batch_size=spec["batch"],
        num_train_epochs=1,
        learning_rate=spec["lr"],
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        use_cpu=not torch.cuda.is_available(),
        bf16=spec["dtype"] == "bf16",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=pad, callbacks=[Timer()])
    trainer.train()
    tokens = real_tokens[: len(step_seconds)]
    steady = list(zip(tokens, step_seconds))[1:] or list(zip(tokens, step_seconds))
    result = {
        "tok_per_s": sum(t for t, _ in steady) / sum(s for _, s in steady),
        "steps": len(step_seconds),
        "padding_share": 1 - sum(real_tokens) / max(1, sum(padded_tokens)),
    }
    Path(spec["out"]).write_text(json.dumps(result))


# ---- the table --------------------------------------------------------------------------------------------
def summarise(result: dict, goals: dict) -> tuple[dict, str]:
    gp, gt, ro, sf = result["grpo_project"], result["grpo_trl"], result["rollouts"], result["sft"]
    ratios = {
        "grpo_step_vs_trl": gp["step_seconds"] / gt["step_seconds"],
        "rollout_vs_raw_vllm": ro["project_tok_per_s"] / ro["raw_tok_per_s"],
        "weight_sync_share": gp["time_sync"] / gp["step_seconds"],
        "sft_vs_padded_hf": sf["project"]["tok_per_s"] / sf["hf_padded"]["tok_per_s"],
    }
    rows = [
        ("GRPO step (s)", f"{gp['step_seconds']:.1f}", f"TRL {gt['step_seconds']:.1f}", "grpo_step_vs_trl"),
        ("  generate (s)", f"{gp['time_generate']:.1f}", f"TRL {gt['time_generate']:.1f}", None),
        ("  train (s)", f"{gp['time_train']:.1f}", f"TRL {gt['time_train']:.1f}", None),
        (
            "rollout (tok/s)",
            f"{ro['project_tok_per_s']:.0f}",
            f"raw vLLM {ro['raw_tok_per_s']:.0f}",
            "rollout_vs_raw_vllm",
        ),
        ("weight sync (s)", f"{gp['time_sync']:.2f}", f"step {gp['step_seconds']:.1f}", "weight_sync_share"),
        (
            "SFT (real tok/s)",
            f"{sf['project']['tok_per_s']:.0f}",
            f"padded HF {sf['hf_padded']['tok_per_s']:.0f}",
            "sft_vs_padded_hf",
        ),
        ("peak memory GRPO, PSS (GB)", f"{gp['peak_pss_gb']:.1f}", f"TRL {gt['peak_pss_gb']:.1f}", None),
        ("peak memory GRPO, RSS sum (GB)", f"{gp['peak_rss_gb']:.1f}", f"TRL {gt['peak_rss_gb']:.1f}", None),
        (
            "peak memory SFT, PSS (GB)",
            f"{sf['project']['peak_pss_gb']:.1f}",
            f"HF {sf['hf_padded']['peak_pss_gb']:.1f}",
            None,
        ),
    ]
    lines = ["| measurement | project | baseline | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for label, ours, theirs, key in rows:
        if key is None:
            lines.append(f"| {label} | {ours} | {theirs} | | | |")
            continue
        op, target = goals[key]
        met = ratios[key] <= target if op == "<=" else ratios[key] >= target
        lines.append(f"| {label} | {ours} | {theirs} | {ratios[key]:.2f} | {op} {target} | {'yes' if met else 'no'} |")
    return ratios, "\n".join(lines)


if __name__ == "__main__":
    part, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    {"rollouts": rollout_worker, "hf_sft": hf_sft_worker}[part](spec)
