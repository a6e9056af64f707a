"""Scoring time of every case in the rewards' red-team set (`pipeline.rl.attacks`), worst case last.

    make bench-reward-attacks
    .venv/bin/python scripts/bench_reward_attacks.py [--repeat 3]

Each case is scored alone through `rewards.score` (accuracy, format and language, as stage-2 does) with
the default verifier (2 fork-server workers, 15 s hard limit per answer); the time includes the
worker pool's replies, not its one-off start. Prints one line per case and the worst time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.rl import attacks  # noqa: E402
from pipeline.rl.rewards import RewardContext, score  # noqa: E402
from pipeline.rl.verify import Verifier  # noqa: E402

WEIGHTS = {"accuracy": 1.0, "format": 0.2, "language": 0.1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="score each case this many times; report the slowest")
    args = ap.parse_args()
    ctx = RewardContext(verifier=Verifier(), language="en")
    score([attacks.THINK + "\\boxed{4}"], [attacks._math()], WEIGHTS, ctx)  # start the pool once
    rows, wrong = [], 0
    try:
        for name, completion, record in attacks.cases():
            worst, acc = 0.0, 0.0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                _, parts = score([completion], [record], WEIGHTS, ctx)
                worst, acc = max(worst, time.perf_counter() - t0), max(acc, parts["accuracy"][0])
            wrong += acc > 0
            rows.append((worst, name, acc))
            print(f"{worst:8.3f} s  accuracy {acc:.0f}  {name}", flush=True)
    finally:
        ctx.verifier.close()
    worst, name, _ = max(rows)
    print(f"worst case: {worst:.3f} s ({name}); {len(rows)} cases, {wrong} rewarded (must be 0)")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
