"""Stage 4: RL for all scenarios (R1 §2.3.4): reasoning rule rewards plus reward models.

Runs the stage-2 loop (`stages.stage2_grpo.run_grpo`: same GRPO maths, rollouts, weight sync,
checkpoints and exact resume) with two prompt pools routed to different rewards:

* **reasoning** prompts (`data`, as in stage-2) get the rule rewards `stage.rewards`: accuracy,
  format, language consistency;
* **general** prompts (`stage.general_path`, chat JSONL) get the reward models `stage.rm_rewards`:
  the helpfulness RM sees only the final summary (after `</think>`), the harmlessness RM the whole
  response (`pipeline.rewards`). RMs are any HF sequence-classification folders, by path or by the
  name of a `make train-rm` stage; they are scored in batches on the trainer's device.
* **schedule**: general prompts, and with them the preference rewards, enter only in the last
  `general_last_steps` steps (R1 used the last 400 of 1,700: longer preference training invited
  reward hacking). Rollout temperature is `stage.rollout.temperature` (R1: 0.7).
* **reward-hacking watch** (`pipeline.rl.hacking_watch`): per step, whether the RM reward rose while
  rule accuracy fell over the last `watch_window` steps, and the response length against its
  starting level; a warning is printed when either trips.

    make stage-4                    # after make stage-3 and make train-rm
    make stage-4 ARGS="stage.general_last_steps=20 stage.rm_rewards={helpfulness: 0.5, harmlessness: 1.0}"
"""

from __future__ import annotations

import argparse

import torch

from pipeline import config as config_lib
from pipeline import dist as dist_lib
from pipeline import run as run_lib
from pipeline.data import DataError, iter_jsonl
from pipeline.paths import absolute
from pipeline.prompts import encode_prompts, load_prompts
from pipeline.reward_model import RewardModel
from pipeline.rewards import RewardContext
from pipeline.rl import PromptPool, general_prompts_at, hacking_watch
from pipeline.sft import load_model
from pipeline.verify import Verifier
from stages.stage2_grpo import run_grpo


def general_prompts(path: str) -> list[dict]:
    """The first user turn of each chat row: prompts with no gold answer, scored by reward models."""
    p = absolute(path)
    if not p.exists():
        raise DataError(f"config key 'stage.general_path': file not found: {p}")
    out = []
    for lineno, row in iter_jsonl(p):
        msgs = row.get("messages")
        if not isinstance(msgs, list):
            raise DataError(f"{p}:{lineno}: expected a 'messages' list")
        user = next((m.get("content") for m in msgs if m.get("role") == "user"), None)
        if user:
            out.append({"id": f"{p.name}:{lineno}", "question": user, "answer": None, "task": "general", "entry": None})
    if not out:
        raise DataError(f"{p}: no user prompts")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stage-4 alignment RL (started by pipeline.launch)")
    ap.add_argument("--config", required=True)
    cfg = config_lib.load(ap.parse_args(argv).config)
    s = cfg.stage
    dist = dist_lib.init()
    init = run_lib.resolve_init(cfg)
    rms = {name: run_lib.resolve_source(cfg, src, f"stage.reward_models.{name}", s.name)
           for name, src in s.reward_models.items() if name in s.rm_rewards}
    torch.manual_seed(s.seed)
    model, tokenizer = load_model(init["path"], cfg, dist.device)
    reasoning = load_prompts(cfg.data, "train")
    general = general_prompts(s.general_path)
    pools = [PromptPool("reasoning", reasoning, encode_prompts(tokenizer, reasoning, cfg.data.system_prompt),
                        dict(s.rewards), lambda step: s.prompts_per_step),
             PromptPool("general", general, encode_prompts(tokenizer, general, cfg.data.system_prompt),
                        dict(s.rm_rewards), lambda step: general_prompts_at(step, s), seed_offset=1_000_003)]
    ctx = RewardContext(verifier=Verifier(workers=s.verifier_workers), language=s.language,
                        reward_models={name: RewardModel(src["path"], dist.device, s.rm_max_length, s.rm_batch_size)
                                       for name, src in rms.items()})
    if dist.is_main:
        run_lib.update_manifest(config_lib.stage_dir(cfg), reward_models=rms)

    def watch(step: int, m: dict, history: list[dict]) -> dict:
        w = hacking_watch(history + [{"step": step, **m}], s.watch_window)
        if dist.is_main and (w.get("watch/rm_up_acc_down") or w.get("watch/length_collapse")):
            print(f"warning: step {step}: possible reward hacking: {w}", flush=True)
        return w

    try:
        run_grpo(cfg, dist, init, model, tokenizer, pools, ctx, load_prompts(cfg.data, "eval"), kind="align",
                 step_hook=watch)
    finally:
        ctx.verifier.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
