"""`make eval` for real through the launcher: vLLM greedy + sampled answers, the reward verifiers,
results per model and benchmark, the side-by-side table, and reuse of finished results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import launch_stage

pytestmark = pytest.mark.integration
pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")

REPO = Path(__file__).resolve().parents[2]
TINY_BENCH = (
    "+stage.catalog.tiny={source: reasoning_gym, tasks: [chain_sum], seed: 90000000, limit: 6, "
    "task_kwargs: {chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}}"
)


def run_eval(runs: Path, *extra: str):
    return launch_stage(
        "eval", runs, "ev", "stage.benchmarks=[tiny]", TINY_BENCH, "stage.samples=3", "stage.max_new_tokens=24", *extra
    )


def test_eval_scores_reuses_results_and_tabulates(tmp_path, warm_tiny_model_dir, tiny_model_dir):
    runs = tmp_path / "runs"
    models = f"stage.models=[{warm_tiny_model_dir},{tiny_model_dir}]"
    r = run_eval(runs, models)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    folder = runs / "ev" / "eval"
    results = json.loads((folder / "results.json").read_text())
    warm, cold = warm_tiny_model_dir.name, tiny_model_dir.name
    assert set(results) == {warm, cold}
    m = results[warm]["tiny"]
    rows = [json.loads(x) for x in (folder / "results" / warm / "tiny.rows.jsonl").read_text().splitlines()]
    assert m["n"] == len(rows) == 6
    assert m["greedy_accuracy"] == pytest.approx(sum(r["greedy_correct"] for r in rows) / 6)
    assert m["pass@1"] == pytest.approx(sum(r["samples_correct"] for r in rows) / 18)
    assert m["pass@1"] <= m["pass@3"] and 0.0 <= m["cons@3"] <= m["pass@3"]
    # the warm-started model learnt the R1 format; the random-init one did not
    assert m["greedy_format"] > results[cold]["tiny"]["greedy_format"]
    table = (folder / "results.md").read_text()
    assert f"| {warm} |" in table and f"| {cold} |" in table

    # a second run reuses both results; changing the sampling recomputes
    r2 = run_eval(runs, models)
    assert r2.returncode == 0 and r2.stdout.count("cached") == 2, r2.stdout[-2000:]
    assert json.loads((folder / "results.json").read_text()) == results
    r3 = run_eval(runs, f"stage.models=[{warm_tiny_model_dir}]", "stage.samples=2")
    assert r3.returncode == 0 and "cached" not in r3.stdout
    assert "pass@2" in json.loads((folder / "results.json").read_text())[warm]["tiny"]


def test_eval_of_a_stage_that_has_not_run_says_what_to_run(tmp_path):
    r = run_eval(tmp_path / "runs", "stage.models=[stage2]")
    assert r.returncode != 0
    assert "make stage-2" in r.stderr + r.stdout


def test_humaneval_runs_through_the_sandbox(tmp_path, warm_tiny_model_dir):
    r = run_eval(
        tmp_path / "runs",
        f"stage.models=[{warm_tiny_model_dir}]",
        "stage.benchmarks=[humaneval]",
        "stage.catalog.humaneval.limit=4",
        "stage.samples=2",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((tmp_path / "runs" / "ev" / "eval" / "results.json").read_text())[warm_tiny_model_dir.name]
    he = m["humaneval"]
    assert he["n"] == 4 and 0.0 <= he["pass@1"] <= he["pass@2"] <= 1.0  # a random tiny model scores ~0
    assert "greedy_lenient" not in he  # no last-number reading for programs


@pytest.mark.slow  # the 2-process eval, like test_pipeline's 2-process run (both in make test-slow)
def test_eval_on_two_processes_shards_the_prompts_and_equals_one_process(tmp_path, warm_tiny_model_dir):
    models = f"stage.models=[{warm_tiny_model_dir}]"
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_eval(one, models)
    r2 = run_eval(two, models, "launcher.nproc=2")
    assert r1.returncode == 0 and r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    name = warm_tiny_model_dir.name

    def result(runs: Path) -> tuple[dict, list[dict]]:
        folder = runs / "ev" / "eval" / "results" / name
        metrics = json.loads((folder / "tiny.json").read_text())["metrics"]
        rows = [json.loads(x) for x in (folder / "tiny.rows.jsonl").read_text().splitlines()]
        return {k: v for k, v in metrics.items() if k != "seconds"}, rows

    (m1, rows1), (m2, rows2) = result(one), result(two)
    # per-request seeds follow the prompt's index: the same answers, in the same order, on any world size
    assert [r["id"] for r in rows2] == [r["id"] for r in rows1]
    assert [(r["greedy"], r["samples_correct"]) for r in rows2] == [(r["greedy"], r["samples_correct"]) for r in rows1]
    assert m2 == m1 and m1["n"] == 6
    assert r2.stdout.count("eval: ") == r1.stdout.count("eval: ")  # rank 0 alone reports and writes


def test_eval_reads_a_hub_model_and_a_hub_benchmark_offline(tmp_path, warm_tiny_model_dir):
    """Issue 15: hub ids where paths go, from a hub cache laid out here, with HF_HUB_OFFLINE=1."""
    import shutil

    sha = "0" * 40
    cache = tmp_path / "hub"
    model = cache / "models--org--tiny" / "snapshots" / sha
    shutil.copytree(warm_tiny_model_dir, model)
    bench = cache / "datasets--org--sums" / "snapshots" / sha / "test.jsonl"
    bench.parent.mkdir(parents=True)
    bench.write_text(
        "".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(4))
    )
    for repo in ("models--org--tiny", "datasets--org--sums"):
        (cache / repo / "refs").mkdir()
        (cache / repo / "refs" / "main").write_text(sha)
    catalog = "+stage.catalog.sums={source: file, path: 'hf://datasets/org/sums/test.jsonl', limit: 4}"
    r = launch_stage(
        "eval",
        tmp_path / "runs",
        "ev",
        "stage.models=[org/tiny]",
        "stage.benchmarks=[sums]",
        catalog,
        "stage.samples=0",
        "stage.max_new_tokens=16",
        env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "ev" / "eval" / "results.json").read_text())
    assert results["tiny"]["sums"]["n"] == 4
    r = launch_stage(
        "eval",
        tmp_path / "runs",
        "ev2",
        "stage.models=[org/absent]",
        env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
    )
    assert r.returncode != 0
    last = (r.stdout + r.stderr).strip().splitlines()[-1]
    assert "org/absent: not in the local Hugging Face cache" in last and "hf download org/absent" in last
