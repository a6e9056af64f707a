"""Stage 2: reasoning-oriented RL with GRPO and rule-based rewards (R1 §2.2-2.3).

Starts from stage-1's export. Per step: sample `group_size` outputs for each of `prompts_per_step`
prompts with vLLM, score them with the rule rewards (accuracy via verifiers, format, language
consistency), turn rewards into group-relative advantages, take `num_minibatches` clipped-surrogate
updates with a k3 KL penalty to a reference model refreshed every `ref_update_every` steps, and push
the new weights into the running vLLM engine in place. The loop is `pipeline.rl.loop.GRPOTrainer`,
the maths `pipeline.rl.maths`; this module only wires the config to them: one prompt pool, the rule
rewards, the held-out prompts.

    make stage-2                      # after make stage-1
    make stage-2 ARGS="stage.group_size=16 stage.aggregation=token_mean stage.eps_high=0.28"
"""

from __future__ import annotations

from transformers import AutoTokenizer

from pipeline.data.prompts import encode_prompts, held_out_prompts, load_prompts
from pipeline.rl.batch import PromptPool
from pipeline.rl.loop import GRPOTrainer, RLTask
from pipeline.rl.rewards import RewardContext
from pipeline.rl.sandbox import sandbox_from
from pipeline.rl.verify import Verifier
from pipeline.run import config as config_lib
from pipeline.run import folders
from pipeline.run.errors import run_stage
from pipeline.train import dist as dist_lib


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "stage-2 GRPO")
    stage = cfg.stage
    dist = dist_lib.init()
    init = folders.resolve_init(cfg)
    tokenizer = AutoTokenizer.from_pretrained(init["path"])
    records = load_prompts(cfg.data, "train")
    pool = PromptPool(
        "reasoning",
        records,
        encode_prompts(tokenizer, records, cfg.data.system_prompt),
        dict(stage.rewards),
        lambda step: stage.prompts_per_step,
    )
    rewards = RewardContext(
        verifier=Verifier(workers=stage.verifier_workers),
        language=stage.language,
        sandbox=sandbox_from(stage.code),
        code_partial_credit=stage.code.partial_credit,
    )
    try:
        GRPOTrainer(cfg, dist, init, RLTask([pool], rewards, held_out_prompts(cfg.data, records))).train()
    finally:
        rewards.verifier.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
