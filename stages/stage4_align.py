"""Stage 4: RL for all scenarios (R1 §2.3.4): reasoning rule rewards plus reward models.

Runs the RL loop of stage-2 (`pipeline.rl.loop.GRPOTrainer`: same GRPO maths, rollouts, weight sync,
checkpoints and exact resume) with two prompt pools routed to different rewards:

* **reasoning** prompts (`data`, as in stage-2) get the rule rewards `stage.rewards`: accuracy,
  format, language consistency;
* **general** prompts (`stage.general_path`, chat JSONL) get the reward models `stage.rm_rewards`:
  the helpfulness RM sees only the final summary (after `</think>`), the harmlessness RM the whole
  response (`pipeline.rl.rewards`). RMs are any HF sequence-classification folders, by path or by
  the name of a `make train-rm` stage; they are scored in batches on the trainer's device.
* **advantages**: a general group's RM σ-scores spread by a few hundredths, so its std floor is
  `stage.rm_std_floor` (0.02), not the reasoning groups' `adv_std_floor` (0.1), which cut a real
  preference to a third of a full-size advantage; a near-tie (0.002 apart) still stays small.
* **system prompt**: general prompts are asked under `stage.general_system_prompt` ("" = the chat
  template's default), the one stage-3's general rows were trained under, not the reasoning prompt
  `data.system_prompt`, which asks for a `\boxed{}` result: under it the stage-3 model answered chat
  prompts in the arithmetic template.
* **schedule**: general prompts, and with them the preference rewards, enter only in the last
  `general_last_steps` steps (R1 used the last 400 of 1,700: longer preference training invited
  reward hacking). Rollout temperature is `stage.rollout.temperature` (R1: 0.7).
* **held-out general prompts**: the rows `stage.general_path` marks `"held_out": true` (32 of the
  embedded 108; stage-3's general mix leaves them out too), or in a file that marks none a fixed seeded
  pick of `stage.general_eval_prompts`, never enter training; every held-out eval scores their greedy
  answers (and the mean over `stage.general_eval_samples` sampled answers each, `<rm>_sampled`) with
  the reward models, and the summary tests the first eval against the last per prompt
  (sign test, paired permutation test), beside the reasoning prompts' McNemar test, so "the RM score
  rose" and "reasoning held" are both measured on unseen prompts.
* **reward-hacking watch** (`pipeline.rl.watch.hacking_watch`): per step, whether the RM reward rose
  while rule accuracy fell over the last `watch_window` steps, and the response length against its
  starting level; a warning is printed when either trips.

    make stage-4                    # after make stage-3 and make train-rm
    make stage-4 ARGS="stage.general_last_steps=20 stage.rm_rewards={helpfulness: 0.5, harmlessness: 1.0}"
"""

from __future__ import annotations

import random

from transformers import AutoTokenizer

from pipeline.data.prompts import encode_prompts, held_out_prompts, load_prompts
from pipeline.data.sources import DataError, iter_jsonl
from pipeline.rl.batch import PromptPool
from pipeline.rl.loop import GRPOTrainer, RLTask
from pipeline.rl.reward_model import RewardModel
from pipeline.rl.rewards import RewardContext
from pipeline.rl.sandbox import sandbox_from
from pipeline.rl.verify import Verifier
from pipeline.rl.watch import general_prompts_at, hacking_watch
from pipeline.run import config as config_lib
from pipeline.run import folders
from pipeline.run.errors import run_stage
from pipeline.run.hub import input_path
from pipeline.train import dist as dist_lib

# The general pool's prompt order and sampling seeds are offset from the reasoning pool's by a large
# prime, so the two pools never share a shuffle or a random stream.
GENERAL_POOL_SEED_OFFSET = 1_000_003


def general_prompts(path: str, system_prompt: str = "") -> list[dict]:
    """The first user turn of each chat row: prompts with no gold answer, scored by reward models, under
    `system_prompt` ("" = the chat template's default, as stage-3's general rows were trained)."""
    p = input_path(path)
    if not p.exists():
        raise DataError(f"config key 'stage.general_path': file not found: {p}")
    out = []
    for lineno, row in iter_jsonl(p):
        messages = row.get("messages")
        if not isinstance(messages, list):
            raise DataError(f"{p}:{lineno}: expected a 'messages' list")
        user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
        if user:
            rec = {"id": f"{p.name}:{lineno}", "question": user, "answer": None, "task": "general", "entry": None}
            rec["system"] = system_prompt  # chat() uses it over data.system_prompt; "" = no system turn
            out.append({**rec, "held_out": True} if row.get("held_out") is True else rec)
    if not out:
        raise DataError(f"{p}: no user prompts")
    return out


def split_general(records: list[dict], held_out: int) -> tuple[list[dict], list[dict]]:
    """(training, held-out) general prompts. The rows the file marks `held_out` (the embedded asset marks
    32, which stage-3's general mix also leaves out); in a file that marks none, a fixed seeded pick of
    `held_out` (`stage.general_eval_prompts`)."""
    marked = [r for r in records if r.get("held_out")]
    if marked:
        if len(marked) == len(records):
            raise DataError(
                "config key 'stage.general_path': every general prompt is marked held_out: none to train on"
            )
        return [r for r in records if not r.get("held_out")], marked
    if not 0 <= held_out < len(records):
        raise DataError(
            f"config key 'stage.general_eval_prompts': {held_out} held out of {len(records)} general prompts "
            "leaves none to train on"
        )
    order = random.Random(GENERAL_POOL_SEED_OFFSET).sample(range(len(records)), len(records))
    chosen = set(order[:held_out])
    return [r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen]


def prompt_pools(cfg, tokenizer, general: list[dict]) -> list[PromptPool]:
    stage, system = cfg.stage, cfg.data.system_prompt
    reasoning = load_prompts(cfg.data, "train")
    return [
        PromptPool(
            "reasoning",
            reasoning,
            encode_prompts(tokenizer, reasoning, system),
            dict(stage.rewards),
            lambda step: stage.prompts_per_step,
        ),
        PromptPool(
            "general",
            general,
            encode_prompts(tokenizer, general, system),
            dict(stage.rm_rewards),
            lambda step: general_prompts_at(step, stage),
            seed_offset=GENERAL_POOL_SEED_OFFSET,
            std_floor=stage.rm_std_floor,
        ),
    ]


def reward_watch(stage, is_main: bool):
    def watch(step: int, metrics: dict, history: list[dict]) -> dict:
        signals = hacking_watch(history + [{"step": step, **metrics}], stage.watch_window)
        if is_main and (signals.get("watch/rm_up_acc_down") or signals.get("watch/length_collapse")):
            print(f"warning: step {step}: possible reward hacking: {signals}", flush=True)
        return signals

    return watch


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "stage-4 alignment RL")
    stage = cfg.stage
    dist = dist_lib.init()
    init = folders.resolve_init(cfg)
    models = {
        name: folders.resolve_source(cfg, src, f"stage.reward_models.{name}", stage.name)
        for name, src in stage.reward_models.items()
        if name in stage.rm_rewards
    }
    general, general_eval = split_general(
        general_prompts(stage.general_path, stage.general_system_prompt), stage.general_eval_prompts
    )
    pools = prompt_pools(cfg, AutoTokenizer.from_pretrained(init["path"]), general)
    rewards = RewardContext(
        verifier=Verifier(workers=stage.verifier_workers),
        language=stage.language,
        sandbox=sandbox_from(stage.code),
        code_partial_credit=stage.code.partial_credit,
        reward_models={
            name: RewardModel(src["path"], dist.device, stage.rm_max_length, stage.rm_batch_size)
            for name, src in models.items()
        },
    )
    if dist.is_main:
        folders.update_manifest(config_lib.stage_dir(cfg), reward_models=models)
    held_out = held_out_prompts(cfg.data, pools[0].records)  # the reasoning pool's questions removed
    task = RLTask(
        pools,
        rewards,
        held_out,
        step_hook=reward_watch(stage, dist.is_main),
        general_eval=general_eval,
        general_eval_rewards=sorted(stage.rm_rewards),
        general_eval_samples=stage.general_eval_samples,
    )
    try:
        GRPOTrainer(cfg, dist, init, task).train()
    finally:
        rewards.verifier.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
