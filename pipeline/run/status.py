"""`make status`: each stage of a run, in pipeline order, with its state and key figures.

    make status                      # run `default`
    make status ARGS="run_name=exp1"

State comes from the stage's manifest: `complete`, `running` (or killed without a word: a
launcher that was SIGKILLed cannot record it, so a `running` stage whose manifest has not been
touched for `STALE_SECONDS` is shown as `stale?`), `failed` (with its exit code), or `not started`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.run import registry
from pipeline.run.config import ConfigError
from pipeline.run.folders import read_manifest, run_dir_from_args

ORDER = tuple(registry.names())
STALE_SECONDS = 3600
KEY_FIGURES = (
    "final_loss",
    "eval_greedy_accuracy_first",
    "eval_greedy_accuracy_last",
    "eval_pass@1_first",
    "eval_pass@1_last",
    "heldout_n",
    "heldout_p",
    "reward_first",
    "reward_last",
    "rows",
    "kept",
    "heldout_accuracy_last",
    "steps",
    "peak_rss_gib",  # the launcher's, over the stage's whole process tree (pipeline.run.memory)
)


def stage_state(folder: Path, now: float | None = None) -> tuple[str, dict]:
    m = read_manifest(folder)
    if m is None:
        return "not started", {}
    state = m.get("status", "unknown")
    if state == "failed" and "exit_code" in m:
        state = f"failed (exit {m['exit_code']})"
    if state == "running":
        updated = (folder / "manifest.json").stat().st_mtime
        if (now or time.time()) - max(updated, _newest(folder)) > STALE_SECONDS:
            state = "stale? (no progress for an hour)"
    figures = dict(m.get("summary", {}))
    if "peak_rss_gib" in m:
        figures["peak_rss_gib"] = m["peak_rss_gib"]
    return state, figures


def _newest(folder: Path) -> float:
    metrics = folder / "metrics.jsonl"
    return metrics.stat().st_mtime if metrics.exists() else 0.0


def table(run_dir: Path) -> str:
    names = (
        list(ORDER)
        + sorted(
            p.name for p in run_dir.iterdir() if p.is_dir() and p.name not in ORDER and (p / "manifest.json").exists()
        )
        if run_dir.exists()
        else list(ORDER)
    )
    lines = [f"run {run_dir}", "", "| stage | state | key figures |", "|---|---|---|"]
    for name in names:
        state, summary = stage_state(run_dir / name)
        figs = ", ".join(f"{k}={_fmt(summary[k])}" for k in KEY_FIGURES if summary.get(k) is not None)
        lines.append(f"| {name} | {state} | {figs} |")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str]) -> int:
    try:
        run_dir = run_dir_from_args(argv, "make status")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
