"""`make bench`: the project against what users would run instead, on the same machine and settings.

    make bench                          # the embedded model on this machine's CPU (about 20 minutes)
    make bench ARGS="mode=tiny"         # a random 2-layer model, seconds per part (CI checks it runs)
    make bench ARGS="device=cuda"       # sized for one GPU (bf16, larger groups)

Measurements, each printed and written to runs/bench/bench-<mode>.json with the hardware and versions:
* **GRPO step**: the project's stage-2 (through the launcher, as `make stage-2` runs it) against TRL's
  `GRPOTrainer` (HF generate), same model, prompts, group size, prompts per step, completion length,
  temperature, dtype, threads, steps and beta; step time and its generate / train split. TRL lives in
  its own venv (`runs/bench/.venv-trl`), made on first use.
* **Rollouts**: the project's `VLLMRollout.generate` (per-request seeds, logprobs, `n` samples) against
  raw vLLM `LLM.generate` on the same prompts and sampling settings.
* **Weight sync**: its time and its share of the project's step.
* **SFT**: the project's packed trainer (stage-1, through the launcher) against HF `Trainer` with
  padded batches, on the same rows; real (non-padding) tokens per second.
* **Peak memory**: RSS of each run's whole process tree (peak allocated on a GPU).

The first step of each GRPO run (start-up, caches) is left out of the step figures.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BENCH_DIR = REPO / "runs" / "bench"
TRL_VENV = BENCH_DIR / ".venv-trl"
TRL_VERSION = "1.16.0"
GOALS = {
    "grpo_step_vs_trl": ("<=", 0.5),
    "rollout_vs_raw_vllm": (">=", 0.9),
    "weight_sync_share": ("<=", 0.10),
    "sft_vs_padded_hf": (">=", 1.5),
}


@dataclass
class Sizes:
    prompts_per_step: int = 4
    group: int = 8
    max_tokens: int = 192
    steps: int = 4  # GRPO steps per run; the first is left out
    temperature: float = 1.0
    beta: float = 0.0
    lr: float = 3e-6
    dtype: str = "fp32"
    rollout_prompts: int = 16  # prompts of the rollout comparison (x group samples each)
    rollout_repeats: int = 2
    sft_examples: int = 96
    hf_batch: int = 4  # padded examples per HF Trainer step (~ the project's 1024-token packed row)


MODES = {
    "cpu": Sizes(),
    "tiny": Sizes(
        prompts_per_step=2,
        group=4,
        max_tokens=16,
        steps=2,
        rollout_prompts=4,
        rollout_repeats=1,
        sft_examples=16,
        lr=1e-4,
    ),
    "cuda": Sizes(
        prompts_per_step=16, group=16, max_tokens=1024, steps=4, dtype="bf16", rollout_prompts=64, sft_examples=512
    ),
}


class PeakRSS:
    """Polls the memory of a process and all its descendants. `peak_gb` is the peak of the summed RSS (an
    upper bound: pages that forked workers share with their parent count once per process), `peak_pss_gb`
    the peak of the summed PSS (shared pages split between their users: what the machine really holds)."""

    def __init__(self, pid: int, every: float = 0.5):
        import psutil

        self.proc, self.every, self.peak, self.peak_pss, self.peak_gpu = psutil.Process(pid), every, 0, 0, 0
        self.gpu = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                tree = [p for p in (self.proc, *self.proc.children(recursive=True)) if p.is_running()]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
                self.peak_pss = max(self.peak_pss, sum(getattr(p.memory_full_info(), "pss", 0) for p in tree))
            except psutil.Error:
                pass
            if self.gpu:  # memory in use on the GPUs, whoever allocated it (the bench runs alone)
                query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
                used = subprocess.run(query, capture_output=True, text=True).stdout.split()
                self.peak_gpu = max(self.peak_gpu, sum(int(x) for x in used if x.isdigit()) << 20)
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        peak = {"peak_rss_gb": self.peak / 2**30, "peak_pss_gb": self.peak_pss / 2**30}
        if self.gpu:
            peak["peak_gpu_gb"] = self.peak_gpu / 2**30
        return peak


def run_measured(
    cmd: list[str], env: dict | None = None, timeout: int = 7200
) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command to completion; returns it with the peak RSS (GiB) of its process tree."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = PeakRSS(proc.pid)
    out, _ = proc.communicate(timeout=timeout)
    peak = watch.stop()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}):\n{out[-3000:]}")
    return done, peak


def tiny_model(path: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, for the CI mode (the tests' tiny model)."""
    if (path / "config.json").exists():
        return path
    from transformers import AutoTokenizer

    from pipeline.run.model_prep import write_tiny_llama
    from pipeline.run.paths import base_model_dir

    return write_tiny_llama(path, AutoTokenizer.from_pretrained(base_model_dir()))


def write_prompts(path: Path, n: int) -> list[dict]:
    """The RL prompts both GRPO runs train on: the project's stage-2 prompt set, as chat messages."""
    from pipeline.data.prompts import chat, load_prompts
    from pipeline.run.config import compose

    cfg = compose(["stage=stage2", "data.tasks=[chain_sum]", f"data.num_examples={n}"])
    records = load_prompts(cfg.data, "train")
    rows = [{"messages": chat(r, cfg.data.system_prompt)} for r in records]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return records


def hardware() -> dict:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except ImportError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), "")
        flags = next((line for line in lscpu.splitlines() if line.startswith("Flags")), "")
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class Settings:
    mode: str
    device: str
    model: str
    sizes: Sizes

    def overrides(self) -> list[str]:
        s = self.sizes
        return [
            f"stage.prompts_per_step={s.prompts_per_step}",
            f"stage.group_size={s.group}",
            f"stage.rollout.max_new_tokens={s.max_tokens}",
            f"stage.rollout.temperature={s.temperature}",
            f"stage.beta={s.beta}",
            f"stage.optim.lr={s.lr}",
            f"model.dtype={s.dtype}",
            f"launcher.accelerator={self.device}",
            "logger=none",
            "logger.progress=false",
        ]


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    device = opts.get("device", "cpu")
    mode = opts.get("mode", "cuda" if device == "cuda" else "cpu")
    if mode not in MODES:
        print(f"error: mode={mode!r}: one of {sorted(MODES)}", file=sys.stderr)
        return 2
    from bench_parts import grpo_project, grpo_trl, rollouts, sft, summarise

    from pipeline.run.paths import base_model_dir

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    model = opts.get("model") or str(tiny_model(BENCH_DIR / "tiny-model") if mode == "tiny" else base_model_dir())
    settings = Settings(mode, device, model, MODES[mode])
    started = time.time()
    result = {"mode": mode, "device": device, "model": model, "sizes": asdict(settings.sizes), "hardware": hardware()}
    print(f"bench: mode {mode}, model {model}, {result['hardware'].get('cpu', '')}", flush=True)
    result["rollouts"] = rollouts(settings)
    result["grpo_project"] = grpo_project(settings)
    result["grpo_trl"] = grpo_trl(settings)
    result["sft"] = sft(settings)
    result["ratios"], table = summarise(result, GOALS)
    result["seconds"] = time.time() - started
    out = BENCH_DIR / f"bench-{mode}.json"
    out.write_text(json.dumps(result, indent=1))
    print(table)
    print(f"bench: {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main(sys.argv[1:]))
