"""Compare two run folders stage by stage: every logged metric (timings aside), stage-3's dataset and
the eval results. For refactors that must not change behaviour.

    .venv/bin/python scripts/compare_runs.py runs/before/p runs/after/p [--tolerance 1e-6]

Exit 0 when every stage matches within the tolerance (relative, on floats), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

TIMING_WORDS = ("time", "seconds", "tok_per_s", "tokens_per_s")


def is_timing(key: str) -> bool:
    return any(word in key for word in TIMING_WORDS)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def differences(a, b, tolerance: float, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if is_timing(key):
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'after' if key not in a else 'before'}")
            else:
                out += differences(a[key], b[key], tolerance, f"{where}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, tolerance, f"{where}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or not math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance):
            return [f"{where}: {a} vs {b}"]
        return []
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def compare(before: Path, after: Path, tolerance: float) -> dict[str, list[str]]:
    report = {}
    for stage in sorted(p.name for p in before.iterdir() if p.is_dir()):
        diffs = []
        for name in ("metrics.jsonl", "data/dataset/train.jsonl"):
            if (before / stage / name).exists():
                diffs += differences(records(before / stage / name), records(after / stage / name), tolerance, name)
        if (before / stage / "results.json").exists():
            diffs += differences(
                json.loads((before / stage / "results.json").read_text()),
                json.loads((after / stage / "results.json").read_text()),
                tolerance,
                "results",
            )
        report[stage] = diffs
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    report = compare(args.before, args.after, args.tolerance)
    for stage, diffs in report.items():
        print(f"{stage}: {'identical' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:10]:
            print(f"    {d}")
    return 0 if all(not d for d in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
