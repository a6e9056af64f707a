"""Stage-4's schedule and reward-hacking watch (R1 §2.3.4)."""

from __future__ import annotations

from pipeline.rl.rewards import RM_REWARDS


def general_prompts_at(step: int, s) -> int:
    """Stage-4 schedule: general prompts (and so preference rewards) only in the last N steps (R1 §2.3.4)."""
    return s.general_prompts_per_step if step >= s.steps - s.general_last_steps else 0


def _slope(ys: list[float]) -> float:
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    den = sum((i - xm) ** 2 for i in range(n))
    return sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / den if den else 0.0


def hacking_watch(history: list[dict], window: int) -> dict:
    """Reward-hacking signals over logged steps: the RM reward rising while rule accuracy falls (least-
    squares slopes over the last `window` steps that have both), and response length against its start."""
    out: dict = {}
    rm_keys = [f"reward/{k}" for k in RM_REWARDS]
    both = [r for r in history if "accuracy" in r and any(k in r for k in rm_keys)]
    if len(both) >= window >= 2:
        recent = both[-window:]
        rm = _slope([sum(r[k] for k in rm_keys if k in r) / sum(k in r for k in rm_keys) for r in recent])
        acc = _slope([r["accuracy"] for r in recent])
        out.update({"watch/rm_slope": rm, "watch/acc_slope": acc, "watch/rm_up_acc_down": float(rm > 0 and acc < 0)})
    lens = [r["response_len_mean"] for r in history if "response_len_mean" in r]
    if len(lens) >= 2 * window:
        ratio = (sum(lens[-window:]) / window) / max(1e-9, sum(lens[:window]) / window)
        out.update({"watch/len_ratio": ratio, "watch/length_collapse": float(ratio < 0.5)})
    return out
