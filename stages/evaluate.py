"""`make eval`: evaluate models side by side on held-out benchmarks (R1 §3's protocol).

For each model (`stage.models`: base, a stage name of this run, or an HF folder; `auto` = base plus
every finished stage) and each benchmark (`stage.benchmarks`, defined in `stage.catalog`), vLLM
generates one greedy answer and `samples` sampled answers per prompt (R1: T 0.6, top-p 0.95);
`pipeline.eval.protocol` scores them with the reward registry's verifiers and computes greedy accuracy,
pass@1 (mean over the k samples), pass@k and cons@k (majority vote).

Results are incremental: `results/<model>/<benchmark>.json` holds the metrics with a signature of
everything that determines them (model path and weights' mtime, benchmark, sampling), and a
re-run reuses every result whose signature matches, so adding a model or benchmark evaluates only
that, and a killed eval loses at most the pair it was on. `results.json` and `results.md` (a
table with one row per model) are rewritten at the end of every run. With two or more models and
greedy answers, `paired.json` (and a section of results.md) compares every model with the first,
prompt by prompt, with an exact McNemar test: "did stage-2 beat stage-1 on these n prompts, and at
what p" needs both models' verdicts on the same prompts, not two accuracies.

    make eval
    make eval ARGS="stage.models=[base,stage1,stage2] stage.benchmarks=[heldout,gsm8k] stage.samples=8"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.data import sources as data_lib
from pipeline.data.code_tasks import humaneval_records, iter_code_file
from pipeline.data.prompts import iter_file, iter_reasoning_gym
from pipeline.eval.maths import mcnemar
from pipeline.eval.protocol import evaluate_model
from pipeline.rl.rewards import RewardContext
from pipeline.rl.rollout import Sampling
from pipeline.rl.sandbox import sandbox_from
from pipeline.rl.verify import Verifier
from pipeline.run import config as config_lib
from pipeline.run import folders as run_lib
from pipeline.run import registry
from pipeline.run.errors import run_stage
from pipeline.train import dist as dist_lib

# A generated benchmark has no natural size: `limit: null` generates this many prompts.
GENERATED_IF_UNLIMITED = 128
TABLE_METRICS = (
    "greedy_accuracy",
    "greedy_lenient",
    "greedy_format",
    "pass@1",
    "cons@{k}",
    "pass@{k}",
    "sample_len_mean",
)
SAMPLED_METRICS = {"pass@1", "cons@{k}", "pass@{k}", "sample_len_mean"}  # absent when stage.samples == 0


def models_to_evaluate(cfg) -> list[tuple[str, dict]]:
    """(label, resolved source) for every requested model; `auto` expands to base + finished stages."""
    names: list[str] = []
    for model in cfg.stage.models:
        if model == "auto":
            run_dir = config_lib.stage_dir(cfg).parent
            names += ["base"] + [s for s in registry.names(policy=True) if run_lib.is_complete(run_dir / s)]
        else:
            names.append(model)
    out, seen = [], set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        src = run_lib.resolve_source(cfg, name, "stage.models", "eval")
        label = name if "/" not in name else Path(name).name
        out.append((label, src))
    return out


def load_benchmark(name: str, bench) -> list[dict]:
    if bench.source == "reasoning_gym":
        kwargs = {k: dict(v) for k, v in (bench.task_kwargs or {}).items()}
        records = list(iter_reasoning_gym(list(bench.tasks), bench.seed, bench.limit or GENERATED_IF_UNLIMITED, kwargs))
    elif bench.source == "humaneval":
        records = humaneval_records(bench.limit)
    else:
        if not bench.path:
            raise config_lib.ConfigError(f"config key 'stage.catalog.{name}.path': a JSONL path is needed")
        if bench.source == "code_file":
            records = list(iter_code_file(bench.path, bench.limit))
        else:
            records = list(iter_file(bench.path, bench.question_field, bench.answer_field, bench.limit))
    if not records:
        raise data_lib.DataError(f"benchmark {name!r}: no prompts")
    return records


def signature(cfg, src: dict, name: str) -> str:
    stage = cfg.stage
    weights = sorted(Path(src["path"]).glob("*.safetensors"))
    blob = {
        "model": src["path"],
        "mtime": [w.stat().st_mtime_ns for w in weights],
        "bench": OmegaConf.to_container(stage.catalog[name], resolve=True),
        "samples": stage.samples,
        "temperature": stage.temperature,
        "top_p": stage.top_p,
        "greedy": stage.greedy,
        "max_new_tokens": stage.max_new_tokens,
        "seed": stage.seed,
        "system_prompt": cfg.data.system_prompt,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def markdown_table(results: dict, benchmarks: list[str], k: int) -> str:
    cols = [c.format(k=k) for c in TABLE_METRICS if k > 0 or c not in SAMPLED_METRICS]
    lines = []
    for bench in benchmarks:
        lines += [f"**{bench}**", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for model, per_bench in results.items():
            metrics = per_bench.get(bench)
            if metrics is None:
                continue
            cells = [
                (f"{metrics[c]:.1%}" if c != "sample_len_mean" else f"{metrics[c]:.0f}") if c in metrics else "-"
                for c in cols
            ]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def cached_results(cfg, folder: Path, label: str, src: dict, say: bool = True) -> tuple[dict, dict]:
    """(metrics already computed for this model with the same signature, benchmarks still to run); `say`
    prints each cache hit (rank 0 only, so a W-process eval says it once)."""
    done, todo = {}, {}
    for name in cfg.stage.benchmarks:
        path = folder / "results" / label / f"{name}.json"
        sig = signature(cfg, src, name)
        cached = json.loads(path.read_text()) if path.exists() else None
        if cached and cached.get("signature") == sig:
            done[name] = cached["metrics"]
            if say:
                print(f"eval: {label} on {name}: cached ({path})", flush=True)
        else:
            todo[name] = (path, sig)
    return done, todo


def evaluate_one(cfg, ctx: RewardContext, src: dict, benchmarks: dict[str, list[dict]], todo: dict, label: str, dist):
    """Evaluate one model on the benchmarks in `todo`, the prompts sharded over the ranks; rank 0 writes
    each result as soon as it is done."""
    stage = cfg.stage
    sampling = Sampling(stage.samples, stage.temperature, stage.top_p, stage.max_new_tokens)
    results = {}
    for name, metrics, rows in evaluate_model(
        src["path"],
        {name: benchmarks[name] for name in todo},
        ctx,
        system_prompt=cfg.data.system_prompt,
        sampling=sampling,
        seed=stage.seed,
        greedy=stage.greedy,
        gpu_memory_utilization=stage.gpu_memory_utilization,
        cpu_kv_cache_gb=stage.cpu_kv_cache_gb,
        rank=dist.rank,
        world=dist.world,
    ):
        path, sig = todo[name]
        results[name] = metrics
        if not dist.is_main:
            continue
        data_lib.write_jsonl(rows, path.with_suffix(".rows.jsonl"))
        data_lib.write_json({"signature": sig, "model": src["path"], "benchmark": name, "metrics": metrics}, path)
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(f"eval: {label} on {name} ({metrics['n']} prompts): {shown}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.from_argv(argv, "evaluation")
    stage = cfg.stage
    folder = config_lib.stage_dir(cfg)
    models = models_to_evaluate(cfg)
    benchmarks = {name: load_benchmark(name, stage.catalog[name]) for name in stage.benchmarks}
    dist = dist_lib.init()
    # every rank reads the cache before rank 0 writes anything, so that all of them take the same work
    plan = [(label, src, *cached_results(cfg, folder, label, src, dist.is_main)) for label, src in models]
    dist.barrier()
    if dist.is_main:
        run_lib.start_stage(folder, cfg, models={label: src["path"] for label, src in models})
    ctx = RewardContext(
        verifier=Verifier(workers=stage.verifier_workers),
        sandbox=sandbox_from(stage.code),
        code_partial_credit=stage.code.partial_credit,
    )
    results: dict[str, dict] = {}
    for label, src, done, todo in plan:
        results[label] = done
        if todo:
            results[label].update(evaluate_one(cfg, ctx, src, benchmarks, todo, label, dist))
    ctx.verifier.close()
    if dist.is_main:
        write_results(cfg, folder, results)
    return 0


def paired_comparisons(folder: Path, labels: list[str], benchmarks: list[str]) -> dict:
    """{benchmark: {model: McNemar of its greedy verdicts against the first model's}}, joined on prompt id."""
    out: dict[str, dict] = {}
    if len(labels) < 2:
        return out
    for bench in benchmarks:
        verdicts = {}
        for label in labels:
            path = folder / "results" / label / f"{bench}.rows.jsonl"
            if path.exists():
                rows = data_lib.read_jsonl(path)
                verdicts[label] = {r["id"]: bool(r["greedy_correct"]) for r in rows if "greedy_correct" in r}
        first = verdicts.get(labels[0])
        if not first:
            continue
        for label in labels[1:]:
            other = verdicts.get(label, {})
            ids = [i for i in first if i in other]
            if ids:
                test = mcnemar([first[i] for i in ids], [other[i] for i in ids])
                out.setdefault(bench, {})[label] = {"against": labels[0], "test": "mcnemar_exact", **test}
    return out


def paired_table(paired: dict) -> str:
    lines = []
    for bench, per_model in paired.items():
        lines += [f"**{bench}: paired greedy verdicts against the first model**", ""]
        lines += ["| model | against | n | before | after | gained | lost | McNemar p |", "|---" * 8 + "|"]
        for label, t in per_model.items():
            lines.append(
                f"| {label} | {t['against']} | {t['n']} | {t['before']:.1%} | {t['after']:.1%} | {t['gained']} "
                f"| {t['lost']} | {t['p']:.3g} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_results(cfg, folder: Path, results: dict) -> None:
    stage = cfg.stage
    data_lib.write_json(results, folder / "results.json")
    table = markdown_table(results, list(stage.benchmarks), stage.samples)
    paired = paired_comparisons(folder, list(results), list(stage.benchmarks)) if stage.greedy else {}
    if paired:
        data_lib.write_json(paired, folder / "paired.json")
        table += "\n" + paired_table(paired)
    (folder / "results.md").write_text(f"# Evaluation of run `{cfg.run_name}`\n\n{table}")
    run_lib.complete_stage(
        folder,
        {"models": len(results), "benchmarks": list(stage.benchmarks)},
        {"results": str(folder / "results.json"), "table": str(folder / "results.md")},
        headline=f"{len(results)} models on {list(stage.benchmarks)}",
    )
    print(table, flush=True)


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
