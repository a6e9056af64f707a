"""vLLM layout over trainer ranks, and tensor-parallel generation: the ranks of one engine submit the
same requests and each keeps its own completions (2 gloo processes, a stand-in engine: no vLLM)."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch.distributed as td
import torch.multiprocessing as mp

from pipeline.rl.rollout import _parallel_layout, _tensor_parallel_generate
from pipeline.run.config import ConfigError


def test_layout_by_world_and_tensor_parallel_size():
    assert _parallel_layout(1, 1) == {"tensor_parallel_size": 1}
    assert _parallel_layout(1, 2) == {"tensor_parallel_size": 2}  # one process: vLLM's own workers
    assert _parallel_layout(8, 1) == {
        "distributed_executor_backend": "external_launcher",
        "tensor_parallel_size": 1,
        "data_parallel_size": 8,
    }
    assert _parallel_layout(16, 2)["data_parallel_size"] == 8
    with pytest.raises(ConfigError, match="tensor_parallel_size': 4 does not divide the 6"):
        _parallel_layout(6, 4)


class EchoEngine:
    """Records what it was asked; completion j of a prompt is its last token + j, its seed in the text."""

    def __init__(self):
        self.requests = []

    def generate(self, prompts, params, use_tqdm=False):
        self.requests.append(([p["prompt_token_ids"] for p in prompts], [q["seed"] for q in params]))
        return [
            SimpleNamespace(
                outputs=[
                    SimpleNamespace(
                        token_ids=[p["prompt_token_ids"][-1] + j],
                        logprobs=None,
                        text=str(q["seed"]),
                        finish_reason="stop",
                    )
                    for j in range(q["n"])
                ]
            )
            for p, q in zip(prompts, params)
        ]


def _worker(rank: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=2)
    engine = EchoEngine()
    prompts = [[10 * rank + i] for i in range(rank + 1)]  # unequal shares: 1 and 2 prompts
    params = [{"seed": 100 * rank + i, "n": 2} for i in range(rank + 1)]
    got = _tensor_parallel_generate(engine, td.group.WORLD, prompts, params)
    out.put((rank, engine.requests, [[(c.token_ids, c.text) for c in g] for g in got]))
    td.destroy_process_group()


def test_tensor_parallel_ranks_submit_the_union_and_keep_their_own():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (req, got)) for r, req, got in (out.get() for _ in procs))
    for p in procs:
        p.join(timeout=60)
    union = ([[0], [10], [11]], [0, 100, 101])
    assert results[0][0] == results[1][0] == [union]  # identical requests on both ranks of the engine
    assert results[0][1] == [[([0], "0"), ([1], "0")]]
    assert results[1][1] == [[([10], "100"), ([11], "100")], [([11], "101"), ([12], "101")]]
