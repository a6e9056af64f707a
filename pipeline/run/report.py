"""`make report`: PNG plots of a run and a markdown report embedding them (runs/<run>/report/).

* SFT stages (stage1, stage3, distill): training loss per optimizer step.
* RL stages (stage2, stage4, and renamed ones such as R1-Zero's stage2_zero or cpu_long's stage2_long,
  found by their manifest's kind), as R1's Figures 2-3: mean reward per component, training accuracy with
  held-out greedy accuracy and pass@1, mean response length, reflection words per response.
* Evaluation (`make eval`'s results.json): per-benchmark accuracy by model (greedy, pass@1, cons@k).

    make report
    make report ARGS="run_name=exp1"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.run import registry
from pipeline.run.config import ConfigError
from pipeline.run.folders import run_dir_from_args
from pipeline.train.metrics import read_metrics

DPI = 110  # readable in a README at GitHub's width
SFT_STAGES = tuple(registry.names(trainer="sft"))
RL_STAGES = tuple(registry.names(trainer="rl"))
RL_KINDS = {s.kind for s in registry.STAGES if s.trainer == "rl"}


def rl_folders(run_dir: Path) -> list[str]:
    """The registry's RL stages, then every other folder of the run an RL stage wrote (`stage.name=...`)."""
    renamed = []
    for manifest in sorted(run_dir.glob("*/manifest.json")):
        name = manifest.parent.name
        if name not in RL_STAGES and json.loads(manifest.read_text()).get("kind") in RL_KINDS:
            renamed.append(name)
    return [*RL_STAGES, *renamed]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _line(ax, recs: list[dict], key: str, **kw) -> None:
    """Plot one metric over steps; a metric the run never logged (e.g. eval with eval_every=0) gets no
    line and no legend entry."""
    xs, ys = _series(recs, key)
    if xs:
        ax.plot(xs, ys, **kw)


def plot_sft(run_dir: Path, out: Path) -> Path | None:
    stages = [s for s in SFT_STAGES if (run_dir / s / "metrics.jsonl").exists()]
    if not stages:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in stages:
        x, y = _series(read_metrics(run_dir / s / "metrics.jsonl"), "loss")
        ax.plot(x, y, marker=".", label=s)
    ax.set(xlabel="optimizer step", ylabel="training loss (mean token NLL, nats)", title="SFT training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "sft_loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_rl(run_dir: Path, stage: str, out: Path) -> Path | None:
    f = run_dir / stage / "metrics.jsonl"
    if not f.exists():
        return None
    recs = read_metrics(f)
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    for key in sorted(
        {k for r in recs for k in r if k.startswith("reward/") and not k.endswith(("_std", "_min", "_max"))}
    ):
        ax.plot(*_series(recs, key), marker=".", label=key.split("/", 1)[1])
    ax.plot(*_series(recs, "reward"), color="black", linewidth=2, label="total (weighted)")
    ax.set(xlabel="RL step", ylabel="mean reward per sample", title="Reward by component")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    _line(ax, recs, "accuracy", marker=".", label="training samples (T=rollout)")
    _line(ax, recs, "eval/greedy_accuracy", marker="o", label="held-out, greedy")
    _line(ax, recs, "eval/pass@1", marker="s", label="held-out, pass@1 (T=0.6)")
    ax.set(xlabel="RL step", ylabel="accuracy (fraction correct)", title="Accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[1][0]
    ax.plot(*_series(recs, "response_len_mean"), marker=".", label="mean")
    ax.plot(*_series(recs, "response_len_max"), linestyle="--", label="max")
    ax.set(xlabel="RL step", ylabel="response length (tokens)", title="Response length (R1 Fig. 3)")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.plot(*_series(recs, "reflection_per_response"), marker=".", color="tab:purple")
    ax.set(xlabel="RL step", ylabel="reflection words per response", title='Reflection words ("wait", "verify", …)')
    from matplotlib.ticker import MaxNLocator

    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{run_dir.name}/{stage}")
    fig.tight_layout()
    path = out / f"{stage}_rl.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


EVAL_LABELS = {
    "greedy_accuracy": "greedy (R1 format, verified)",
    "greedy_lenient": "greedy, last number (no format)",
    "pass@1": "pass@1 (T=0.6)",
}


def plot_eval(run_dir: Path, out: Path) -> Path | None:
    f = run_dir / "eval" / "results.json"
    if not f.exists():
        return None
    results = json.loads(f.read_text())
    benches = sorted({b for per in results.values() for b in per})
    if not benches:
        return None
    plt = _plt()
    models = list(results)
    fig, axes = plt.subplots(1, len(benches), figsize=(max(6, 2 + 1.6 * len(models)) * len(benches), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        metrics = [
            m
            for m in ("greedy_accuracy", "greedy_lenient", "pass@1")
            if any(m in results[x].get(bench, {}) for x in models)
        ]
        cons = next((k for x in models for k in results[x].get(bench, {}) if k.startswith("cons@")), None)
        metrics += [cons] if cons else []
        width = 0.8 / max(1, len(metrics))
        for j, metric in enumerate(metrics):
            vals = [100 * results[x].get(bench, {}).get(metric, 0.0) for x in models]
            bars = ax.bar(
                [i + j * width for i in range(len(models))], vals, width, label=EVAL_LABELS.get(metric, metric)
            )
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(models))], models)
        ax.set(ylabel="accuracy (%)", title=f"{bench}", ylim=(0, 100))
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Held-out accuracy by stage")
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def build(run_dir: Path) -> Path:
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# Report: run `{run_dir.name}`", ""]
    acc = plot_eval(run_dir, out)
    if acc:
        sections += ["## Held-out accuracy by stage", "", f"![accuracy]({acc.name})", ""]
        table = run_dir / "eval" / "results.md"
        if table.exists():
            sections += [table.read_text().split("\n", 2)[-1], ""]
    sft = plot_sft(run_dir, out)
    if sft:
        sections += ["## SFT training loss", "", f"![sft loss]({sft.name})", ""]
    for stage in rl_folders(run_dir):
        p = plot_rl(run_dir, stage, out)
        if p:
            sections += [f"## {stage}: RL curves", "", f"![{stage}]({p.name})", ""]
    md = out / "report.md"
    md.write_text("\n".join(sections))
    return md


def main(argv: list[str]) -> int:
    try:
        run_dir = run_dir_from_args(argv, "make report")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not run_dir.exists():
        print(f"error: no run folder {run_dir}", file=sys.stderr)
        return 2
    print(f"report: {build(run_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
