"""Stage-3 selection: each filter removes what it should and is counted; stats add up."""

from __future__ import annotations

import json

import pytest

from pipeline.data.rejection import (
    FILTERS,
    ShardStats,
    dedup_key,
    length_summary,
    longest_paragraph_words,
    readability_failure,
    select,
    summarise,
)
from pipeline.rl.judge import judge_messages, parse_verdict
from pipeline.rl.rollout import Completion
from pipeline.run.config import compose


@pytest.fixture(scope="module")
def cfg():
    return compose(["stage=stage3"]).stage


def C(text: str, n: int = 10) -> Completion:
    return Completion(token_ids=list(range(n)), logprobs=[0.0] * n, text=text, truncated=False)


GOOD = "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is \\boxed{5}."


def test_readability_filters(cfg):
    r = cfg.readability
    assert readability_failure(GOOD, "chain_sum", r, "en") is None
    mixed = "<think>\nFirst 我们 计算 两个 数字 的 和 然后 检查 then add.\n</think>\n\n\\boxed{5}"
    assert readability_failure(mixed, "chain_sum", r, "en") == "mixed_language"
    long = "<think>\n" + "word " * 201 + "\n</think>\n\n\\boxed{5}"
    assert readability_failure(long, "chain_sum", r, "en") == "long_paragraph"
    split = "<think>\n" + "word " * 150 + "\n\n" + "word " * 150 + "\n</think>\n\n\\boxed{5}"
    assert readability_failure(split, "chain_sum", r, "en") is None  # two short paragraphs are fine
    code = "<think>\n```python\nprint(2 + 3)\n```\n</think>\n\n\\boxed{5}"
    assert readability_failure(code, "chain_sum", r, "en") == "code_block"
    assert (
        readability_failure(
            code, "coding", compose(["stage=stage3", "stage.readability.code_tasks=[coding]"]).stage.readability, "en"
        )
        is None
    )


def test_helpers():
    assert longest_paragraph_words("a b c\n\nd e\n \n f") == 3
    assert dedup_key("  The Answer\n is  5 ") == dedup_key("the answer is 5")
    s = length_summary([10, 20, 30, 40, 50])
    assert (s["min"], s["p50"], s["max"], s["mean"]) == (10, 30, 50, 30)
    assert sum(s["histogram"]["counts"]) == 5


def test_select_counts_every_removal(cfg):
    recs = [
        {"id": "a", "question": "2+3?", "answer": "5", "task": "chain_sum"},
        {"id": "b", "question": "1+1?", "answer": "2", "task": "basic_arithmetic"},
    ]
    groups = [
        [C(GOOD), C(GOOD.replace("2 + 3", "2+3")), C(GOOD), C("wrong"), C(GOOD + " again"), C("<think></think>")],
        [C("x"), C("y")],
    ]
    correct = [[True, True, True, False, True, None], [False, False]]
    fmt = [[True, True, True, False, True, False], [False, False]]
    rows, st = select(recs, groups, correct, fmt, cfg, "en", "SYS")
    # a: GOOD kept, 2+3 variant kept (different text), GOOD again -> duplicate, wrong -> incorrect,
    #    the fifth is correct and new but over the cap of 2, the sixth unverifiable
    assert [r["messages"][-1]["content"] for r in rows] == [GOOD, GOOD.replace("2 + 3", "2+3")]
    assert st.removed == {**{f: 0 for f in FILTERS}, "duplicate": 1, "incorrect": 3, "over_cap": 1, "unverifiable": 1}
    assert (st.prompts, st.samples, st.kept) == (2, 8, 2)
    assert st.samples == st.kept + sum(st.removed.values())
    assert rows[0]["messages"][0] == {"role": "system", "content": "SYS"} and rows[0]["task"] == "chain_sum"
    assert st.per_task["chain_sum"] == {"prompts": 1, "samples": 6, "correct": 4, "prompts_solved": 1, "kept": 2}
    assert st.per_task["basic_arithmetic"]["prompts_solved"] == 0
    summary = summarise(st)
    assert summary["per_task"]["chain_sum"]["sample_pass_rate"] == pytest.approx(4 / 6)
    assert summary["per_task"]["basic_arithmetic"]["prompt_pass_rate"] == 0
    # stats survive the JSON round trip of the shard files and add up across shards
    again = ShardStats.from_dict(json.loads(json.dumps(st.to_dict())))
    again.add(st)
    assert again.kept == 4 and again.removed["incorrect"] == 6 and again.per_task["chain_sum"]["samples"] == 12


def test_judge_verdicts_and_prompt():
    assert parse_verdict("CORRECT") and parse_verdict(" yes.") and parse_verdict("Correct, it matches")
    assert not parse_verdict("INCORRECT") and not parse_verdict("") and not parse_verdict("I think so")
    assert not parse_verdict("incorrect, not correct")  # the first verdict word decides
    msgs = judge_messages("What is 2+3?", "5", "<think>secret reasoning</think>The answer is \\boxed{5}")
    assert "secret reasoning" not in msgs[-1]["content"] and "\\boxed{5}" in msgs[-1]["content"]


def test_stage3_config_checks():
    from pipeline.run.config import ConfigError

    with pytest.raises(ConfigError, match="stage.readability.max_per_promt"):
        compose(["stage=stage3", "stage.readability.max_per_promt=3"])
    with pytest.raises(ConfigError, match="stage.general.source"):
        compose(["stage=stage3", "stage.general.source=web"])
    with pytest.raises(ConfigError, match="stage.language"):
        compose(["stage=stage3", "stage.language=klingon"])


def test_dataset_mixes_general_data_and_loads_with_datasets(tmp_path):
    import datasets

    from pipeline.data import sources as data_lib
    from stages.stage3_rs import build_dataset, shard_path

    cfg = compose(["stage=stage3", f"runs_dir={tmp_path}", "stage.general.ratio=0.5"])
    recs = [{"id": str(i), "question": f"{i}+1?", "answer": str(i + 1), "task": "chain_sum"} for i in range(6)]
    for shard in (0, 1):
        part = recs[3 * shard : 3 * shard + 3]
        groups = [[C(GOOD.replace("5", str(int(r["answer"]))))] for r in part]
        rows, st = select(part, groups, [[True]] * 3, [[True]] * 3, cfg.stage, "en", "SYS")
        data_lib.write_jsonl(rows, shard_path(tmp_path, shard))
        data_lib.write_json(
            {**st.to_dict(), "seconds": 1.0, "generate_seconds": 1.0, "tok_per_s": 30.0},
            shard_path(tmp_path, shard).with_suffix(".stats.json"),
        )
    info = build_dataset(cfg, tmp_path)
    out = tmp_path / "data" / "dataset"
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["reasoning_rows"], stats["general_rows"], info["rows"]) == (6, 3, 9)
    assert stats["prompts_seen"] == 6 and stats["kept"] == 6 and stats["shards"] == 2
    assert stats["kept_length_tokens"]["count"] == 6
    assert info["sha256"] == data_lib.sha256_file(out / "train.jsonl") and info["version"].endswith(info["sha256"][:12])
    ds = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    assert len(ds) == 9
    general = [r for r in ds if r["origin"] == "general"]
    assert len(general) == 3
    assert all(r["messages"][-1]["content"].startswith("<think>\n\n</think>\n\n") for r in general)


def test_general_mix_never_takes_a_row_stage4_holds_out():
    from stages.stage3_rs import general_rows
    from stages.stage4_align import general_prompts, split_general

    cfg = compose(["stage=stage3", "stage.general.ratio=10.0"])  # asks for more than the asset holds
    rows = general_rows(cfg, 100)
    _, held = split_general(general_prompts(cfg.stage.general.path), 0)
    asked = {r["messages"][-2]["content"] for r in rows}
    assert len(rows) == 76 and len(asked) == 76  # all 108 but the 32 marked held_out
    assert asked.isdisjoint(r["question"] for r in held)
    assert not any("held_out" in r for r in rows)


def test_free_text_gold_answers_are_recognised():
    from pipeline.rl.verify import is_free_text

    for gold in ("the Pacific", "Paris", "the blue one"):
        assert is_free_text(gold), gold  # math-verify would parse these as products of symbols
    for gold in ("4", "\\frac{1}{2}", "x=3", "12 dollars", "\\text{(A)}", "3\\sqrt{2}", "(1, 2)", "-7"):
        assert not is_free_text(gold), gold
