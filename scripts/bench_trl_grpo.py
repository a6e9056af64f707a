"""TRL's GRPOTrainer on the benchmark's settings, timed per step. Runs in TRL's own venv
(`runs/bench/.venv-trl`, made by `scripts/bench.py`), so the project's pins stay untouched; it imports
nothing from the project.

    runs/bench/.venv-trl/bin/python scripts/bench_trl_grpo.py --model M --prompts P.jsonl --out T.json ...

The reward is the R1 format check (a think block, then a boxed answer): cheap, as the project's rule
rewards are next to generation and training. Per step it records the wall time, the time inside
`_generate` (sampling) and inside `_generate_and_score_completions` (sampling, rewards, advantages).
"""

from __future__ import annotations

import argparse
import json
import re
import time

FORMAT = re.compile(r"^\s*<think>.+?</think>.*\\boxed\{.+\}", re.DOTALL)


def format_reward(completions, **_):
    return [1.0 if FORMAT.search(c[0]["content"] if isinstance(c, list) else c) else 0.0 for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, kind in (
        ("model", str),
        ("prompts", str),
        ("out", str),
        ("group", int),
        ("prompts_per_step", int),
        ("max_tokens", int),
        ("steps", int),
        ("temperature", float),
        ("beta", float),
        ("lr", float),
        ("dtype", str),
        ("workdir", str),
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, required=True)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f]
    dataset = Dataset.from_list([{"prompt": row["messages"]} for row in rows])
    config = GRPOConfig(
        output_dir=args.workdir,
        per_device_train_batch_size=args.group * args.prompts_per_step,
        num_generations=args.group,
        max_completion_length=args.max_tokens,
        temperature=args.temperature,
        top_p=1.0,
        beta=args.beta,
        learning_rate=args.lr,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_accumulation_steps=1,
        seed=42,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.dtype == "bf16",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=args.model, reward_funcs=format_reward, args=config, train_dataset=dataset)
    timings = {"generate": [], "generate_and_score": []}

    def timed(name, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timings[name].append(time.perf_counter() - start)

        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._generate_and_score_completions = timed("generate_and_score", trainer._generate_and_score_completions)
    steps: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()
            self.marks = (len(timings["generate"]), len(timings["generate_and_score"]))

        def on_step_end(self, *_, **__):
            steps.append(
                {
                    "step_seconds": time.perf_counter() - self.start,
                    "generate": sum(timings["generate"][self.marks[0] :]),
                    "generate_and_score": sum(timings["generate_and_score"][self.marks[1] :]),
                }
            )

    trainer.add_callback(StepTimer())
    trainer.train()
    tokens = [r.get("num_tokens") for r in trainer.state.log_history if "num_tokens" in r]
    with open(args.out, "w") as f:
        json.dump(
            {
                "steps": steps,
                "log": trainer.state.log_history,
                "num_tokens": tokens,
                "torch_threads": torch.get_num_threads(),
            },
            f,
        )


if __name__ == "__main__":
    main()
