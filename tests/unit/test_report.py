"""`make report` renders readable PNGs from a run's metrics and eval results."""

import json

from pipeline.run.report import build


def write(path, recs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_report_renders_every_plot(tmp_path):
    run = tmp_path / "r"
    write(run / "stage1" / "metrics.jsonl", [{"step": i, "loss": 2.0 / i} for i in range(1, 11)])
    write(
        run / "stage2" / "metrics.jsonl",
        [{"step": 0, "eval/greedy_accuracy": 0.2, "eval/pass@1": 0.18}]
        + [
            {
                "step": i,
                "reward": 0.5 + 0.01 * i,
                "reward/accuracy": 0.3,
                "reward/format": 0.9,
                "accuracy": 0.3,
                "response_len_mean": 100 + i,
                "response_len_max": 150,
                "reflection_per_response": 2.0,
            }
            for i in range(1, 6)
        ],
    )
    (run / "stage2_zero").mkdir()  # a renamed RL stage (R1-Zero), found by its manifest's kind
    (run / "stage2_zero" / "metrics.jsonl").write_text((run / "stage2" / "metrics.jsonl").read_text())
    (run / "stage2_zero" / "manifest.json").write_text(json.dumps({"kind": "grpo", "stage": "stage2_zero"}))
    write(run / "stage1_short" / "metrics.jsonl", [{"step": 1, "loss": 1.0}])
    (run / "stage1_short" / "manifest.json").write_text(json.dumps({"kind": "sft"}))
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(
        json.dumps(
            {
                "base": {"heldout": {"greedy_accuracy": 0.05, "pass@1": 0.04, "cons@4": 0.05}},
                "stage1": {"heldout": {"greedy_accuracy": 0.2, "pass@1": 0.18, "cons@4": 0.19}},
            }
        )
    )
    md = build(run)
    text = md.read_text()
    for name in ("accuracy.png", "sft_loss.png", "stage2_rl.png", "stage2_zero_rl.png"):  # renamed RL stages too
        png = md.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert f"({name})" in text
    assert "stage4_rl.png" not in text and "stage1_short_rl" not in text  # not run / not RL: left out
