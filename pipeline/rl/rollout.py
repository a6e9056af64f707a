"""Rollouts through vLLM, with in-place weight sync from the trainer. One code path on CPU and GPU.

* The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, uni-process executor): on
  2 CPU cores that is the fastest mode measured (~430-580 tok/s against ~280 multi-process), and it
  lets weight sync hand tensors over without serialising them.
* Weight sync: vLLM repacks weights on CPU, so `model.load_weights()` fails there; the worker's
  `reload_weights(weights_iterator=…, is_checkpoint_format=True)` takes HF-named tensors and redoes
  the repacking. It is reached through a worker extension (`pipeline.rl.weight_sync.WeightSync`) and
  followed by `reset_prefix_cache()`, or cached KV from the old weights would be reused.
* Logprobs are `processed_logprobs` (after temperature), i.e. the distribution the token was
  actually sampled from, which is what the importance ratio needs.
* Sampling seeds are per request, derived from (run seed, step, prompt index), so a resumed run
  samples exactly what the uninterrupted run sampled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from pipeline.run.config import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How to sample: `n` answers per prompt at `temperature` (0 = greedy) and `top_p`, up to `max_tokens`."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int


# vLLM gives sample i of an n-sample request the seed `seed + i`: keep every request seed this far
# below 2**31 - 1 so that seed + i still fits.
SEED_HEADROOM = 65536
# Tokens vLLM may schedule per step on CPU; at least one whole prompt (see the prefill note below).
MIN_BATCHED_TOKENS = 8192


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # rollout policy's log-prob of each sampled token
    text: str
    truncated: bool  # stopped by max_tokens, not by EOS


def request_seed(base: int, step: int, index: int) -> int:
    """The sampling seed of one request, a hash of (run seed, step, prompt draw index).

    vLLM gives sample i of an n-sample request the seed `seed + i`, so the seeds of different
    requests must be far apart: consecutive seeds would make prompt k's sample i+1 reuse prompt
    k+1's sample i random stream, correlating the groups of a batch.
    """
    digest = hashlib.blake2b(f"{base}:{step}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1 - SEED_HEADROOM)


@contextlib.contextmanager
def _keep_default_process_group():
    """vLLM's in-process shutdown tears down "its" distributed state, the default process group
    included, which on several processes belongs to the stage (stage-3 trains after generating, `make
    eval` gathers after each model). While it shuts down, only its own sub-groups may be destroyed."""
    import torch.distributed as td

    if not td.is_initialized():
        yield
        return
    destroy = td.destroy_process_group

    def destroy_subgroups_only(group=None):
        if group is not None and group is not td.GroupMember.WORLD:
            destroy(group)

    td.destroy_process_group = destroy_subgroups_only
    try:
        yield
    finally:
        td.destroy_process_group = destroy


class VLLMRollout:
    """An in-process vLLM engine that samples rollouts and takes the trainer's weights in place."""

    def __init__(
        self,
        model_path: str,
        *,
        max_model_len: int,
        seed: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        cpu_kv_cache_gb: int = 2,
        enable_sleep: bool = False,
        sleep_level: int = 1,
        tensor_parallel_size: int = 1,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gb))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        from vllm import LLM

        self.cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu"
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=not self.cuda,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="pipeline.rl.weight_sync.WeightSync",
            enable_prefix_caching=True,
        )
        if self.cuda:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep)
            kwargs.update(_parallel_layout(int(os.environ.get("WORLD_SIZE", "1")), tensor_parallel_size))
        elif tensor_parallel_size > 1:
            raise ConfigError("config key 'stage.rollout.tensor_parallel_size': more than 1 needs GPUs")
        else:
            # A prompt whose prefill is split across scheduler steps has its sampled token discarded,
            # and vLLM then rewinds the request's seeded generator with `set_offset`, which CPU
            # generators do not have ("CPU Generator does not use offset": every seeded batch with
            # more prompt tokens than one step's budget crashed). Whole-prompt prefills avoid it.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(MIN_BATCHED_TOKENS, max_model_len))
        self.tp_group = _tensor_parallel_group(tensor_parallel_size) if self.cuda else None
        self.llm = LLM(**kwargs)
        self.enable_sleep, self.sleep_level = enable_sleep and self.cuda, sleep_level
        self.sleeping = False
        self.sleep_wake_seconds = 0.0  # spent in sleep() and wake_up() so far (GPU sleep mode)

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, seeds: list[int], stop_token_ids: list[int] | None = None
    ) -> list[list[Completion]]:
        """`sampling.n` completions per prompt; request i samples with seed `seeds[i]`."""
        from vllm import SamplingParams

        if not prompts and self.tp_group is None:  # a rank of a tensor-parallel group must still join in
            return []
        self.wake()
        greedy = sampling.temperature == 0
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
                logprobs=None if greedy else 0,
                stop_token_ids=stop_token_ids,
            )
            for seed in seeds
        ]
        if self.tp_group is not None:  # one engine over several ranks: it generates their prompts together
            return _tensor_parallel_generate(self.llm, self.tp_group, prompts, params)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[_completion(sample) for sample in output.outputs] for output in outputs]

    def push_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (HF names) into the running engine, in place."""
        self.wake()
        tensors = [(k, v.detach().to("cpu" if not self.cuda else v.device).contiguous()) for k, v in named_tensors]
        self.llm.collective_rpc("load_hf_weights", args=(tensors,))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down and free its memory (before a trainer needs the device)."""
        import gc

        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            with _keep_default_process_group():
                core.shutdown()
        del llm, core
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def sleep(self) -> None:
        """Free GPU memory for training (weights are re-pushed after the update anyway)."""
        if self.enable_sleep and not self.sleeping:
            start = time.perf_counter()
            self.llm.sleep(level=self.sleep_level)
            self.sleep_wake_seconds += time.perf_counter() - start
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            start = time.perf_counter()
            self.llm.wake_up()
            self.sleep_wake_seconds += time.perf_counter() - start
            self.sleeping = False


def _parallel_layout(world: int, tp: int) -> dict:
    """vLLM engine arguments for `world` trainer ranks (torchrun) with `tp`-way tensor parallelism.

    One rank, tp 1: a plain in-process engine. One rank, tp > 1: vLLM's own worker processes.
    Several ranks: vLLM's `external_launcher` (its torchrun_dp example), so that no rank lands on
    cuda:0 by default: each group of `tp` consecutive ranks (vLLM puts TP innermost) is one engine,
    sharded over those ranks' GPUs, and there are world / tp data-parallel engines."""
    if world == 1:
        return {"tensor_parallel_size": tp}
    if world % tp:
        raise ConfigError(
            f"config key 'stage.rollout.tensor_parallel_size': {tp} does not divide the {world} processes"
        )
    return dict(
        distributed_executor_backend="external_launcher", tensor_parallel_size=tp, data_parallel_size=world // tp
    )


def _tensor_parallel_group(tp: int):
    """This rank's tensor-parallel group (consecutive ranks), or None when each rank has its own engine."""
    import torch.distributed as td

    if tp == 1 or not td.is_initialized() or td.get_world_size() == 1:
        return None
    mine = None
    for start in range(0, td.get_world_size(), tp):  # every rank creates every group, in the same order
        group = td.new_group(list(range(start, start + tp)))
        if start <= td.get_rank() < start + tp:
            mine = group
    return mine


def _tensor_parallel_generate(llm, group, prompts: list[list[int]], params: list) -> list[list[Completion]]:
    """The ranks of one tensor-parallel engine must submit identical requests: each submits the union of
    the group's prompts (with their own seeds, so the samples are those of one rank per prompt) and
    keeps the completions of its own."""
    import torch.distributed as td

    parts: list = [None] * td.get_world_size(group)
    td.all_gather_object(parts, (prompts, params), group=group)
    all_prompts = [p for part, _ in parts for p in part]
    all_params = [q for _, part in parts for q in part]
    outputs = llm.generate([{"prompt_token_ids": p} for p in all_prompts], all_params, use_tqdm=False)
    start = sum(len(part) for part, _ in parts[: td.get_rank(group)])
    return [[_completion(s) for s in out.outputs] for out in outputs[start : start + len(prompts)]]


def _completion(sample) -> Completion:
    """One vLLM CompletionOutput as a Completion; with logprobs=0 each position holds the sampled token's."""
    logprobs = [next(iter(d.values())).logprob if d else 0.0 for d in (sample.logprobs or [])]
    return Completion(
        token_ids=list(sample.token_ids),
        logprobs=logprobs,
        text=sample.text,
        truncated=sample.finish_reason == "length",
    )
