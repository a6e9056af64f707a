import json

import pytest
from omegaconf import OmegaConf

from pipeline.data.sources import DataError, load_rows, read_jsonl, sha256_file, write_jsonl
from pipeline.run.config import compose

GOOD = "<think>\n1 + 1 = 2.\n</think>\n\nSo 2. The answer is \\boxed{2}."


def data_cfg(**over):
    cfg = compose(["data=file", "data.path=/unused"]).data
    OmegaConf.set_struct(cfg, False)
    for k, v in over.items():
        cfg[k] = v
    return cfg


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_jsonl_prompt_response_rows_get_system_prompt(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"prompt": "1+1?", "response": GOOD}])
    rows = load_rows(data_cfg(path=str(p)))
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[0]["messages"][2]["content"] == GOOD


def test_jsonl_messages_rows_keep_their_system_prompt(tmp_path):
    msgs = [
        {"role": "system", "content": "mine"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": GOOD},
    ]
    p = write(tmp_path / "d.jsonl", [{"messages": msgs}])
    assert load_rows(data_cfg(path=str(p)))[0]["messages"] == msgs


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "solution": [GOOD, GOOD]}), p)
    rows = load_rows(data_cfg(path=str(p), prompt_field="question", response_field="solution"))
    assert len(rows) == 2 and rows[1]["messages"][1]["content"] == "b"


def test_bad_json_names_file_and_line(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"prompt": "q", "response": GOOD}, "", "{not json"])
    with pytest.raises(DataError, match=r"d\.jsonl:3: invalid JSON"):
        load_rows(data_cfg(path=str(p)))


def test_missing_fields_name_the_line_and_keys(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"prompt": "q", "response": GOOD}, {"question": "q"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: needs a 'messages' column"):
        load_rows(data_cfg(path=str(p)))


def test_non_r1_answer_is_rejected_unless_allowed(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"prompt": "q", "response": "just 2"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: .*R1 format"):
        load_rows(data_cfg(path=str(p)))
    assert len(load_rows(data_cfg(path=str(p), require_r1_format=False))) == 1


def test_missing_file_and_unknown_source_name_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.path"):
        load_rows(data_cfg(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match=r"data\.source"):
        load_rows(data_cfg(source="ftp"))


def test_coldstart_source_interleaves_tasks():
    cfg = compose(["data.num_examples=7", "data.tasks=[chain_sum,gsm_symbolic]"]).data
    rows = load_rows(cfg)
    assert len(rows) == 7
    assert [r["task"] for r in rows[:4]] == ["chain_sum", "gsm_symbolic"] * 2


def test_write_jsonl_round_trip_and_hash(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "é"}]}, {"x": 1}]
    digest = write_jsonl(rows, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == rows
    assert digest == sha256_file(tmp_path / "out.jsonl")
    assert write_jsonl(rows, tmp_path / "again.jsonl") == digest
