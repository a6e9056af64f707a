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

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch


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
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if world > 1:
                # under torchrun: every rank is one data-parallel replica in its own process, on the GPU
                # dist.init set for it (vLLM's torchrun_dp_example), instead of all landing on cuda:0;
                # each rank passes its own prompts, as on CPU
                kwargs.update(
                    distributed_executor_backend="external_launcher", tensor_parallel_size=1, data_parallel_size=world
                )
        else:
            # A prompt whose prefill is split across scheduler steps has its sampled token discarded,
            # and vLLM then rewinds the request's seeded generator with `set_offset`, which CPU
            # generators do not have ("CPU Generator does not use offset": every seeded batch with
            # more prompt tokens than one step's budget crashed). Whole-prompt prefills avoid it.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(MIN_BATCHED_TOKENS, max_model_len))
        self.llm = LLM(**kwargs)
        self.enable_sleep, self.sleep_level = enable_sleep and self.cuda, sleep_level
        self.sleeping = False

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, seeds: list[int], stop_token_ids: list[int] | None = None
    ) -> list[list[Completion]]:
        """`sampling.n` completions per prompt; request i samples with seed `seeds[i]`."""
        from vllm import SamplingParams

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
            core.shutdown()
        del llm, core
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def sleep(self) -> None:
        """Free GPU memory for training (weights are re-pushed after the update anyway)."""
        if self.enable_sleep and not self.sleeping:
            self.llm.sleep(level=self.sleep_level)
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False


def _completion(sample) -> Completion:
    """One vLLM CompletionOutput as a Completion; with logprobs=0 each position holds the sampled token's."""
    logprobs = [next(iter(d.values())).logprob if d else 0.0 for d in (sample.logprobs or [])]
    return Completion(
        token_ids=list(sample.token_ids),
        logprobs=logprobs,
        text=sample.text,
        truncated=sample.finish_reason == "length",
    )
