"""HF dataset sources on local json/jsonl/parquet/csv files the test writes (no hub, no network)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from lhas_ray.tasks.hf import HFSourceConfig, load_hf_examples
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA

pytest.importorskip("datasets", reason="HF sources read through the datasets package")

ROWS = [
    {"question": f"What is {i} plus {i}?", "solution": str(2 * i), "topic": "add" if i % 2 else "double", "n": i}
    for i in range(30)
]


@pytest.fixture
def files(tmp_path):
    """The same 30 rows as jsonl, json (one array), parquet and csv."""
    table = pa.Table.from_pylist(ROWS)
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "data.json").write_text(json.dumps(ROWS))
    pq.write_table(table, tmp_path / "data.parquet")
    pcsv.write_csv(table, tmp_path / "data.csv")
    return tmp_path


@pytest.mark.parametrize(
    ("builder", "name"),
    [("json", "data.jsonl"), ("json", "data.json"), ("parquet", "data.parquet"), ("csv", "data.csv")],
)
def test_prompt_answer_mapping_on_every_local_format(files, builder, name):
    spec = {
        "path": builder,
        "data_files": str(files / name),
        "columns": {"prompt": "question", "answer": "solution", "skill": "topic"},
        "cache_dir": str(files / "hf-cache"),
    }
    t = load_hf_examples(spec, stage=2, split="pool", start_id=500)
    assert t.schema == EXAMPLE_SCHEMA and t.num_rows == 30
    rows = t.to_pylist()
    assert rows[3] == {
        "example_id": 503,
        "stage": 2,
        "skill": "add",
        "prompt": "What is 3 plus 3?",
        "answer": "6",  # csv reads it back as an integer: cast to text
        "split": "pool",
        "tags": [builder],
    }


def test_text_mapping_sampling_and_truncation(files):
    spec = HFSourceConfig(
        path="json",
        data_files=[str(files / "data.jsonl")],
        columns={"text": "question"},
        skill="math",
        max_chars=9,
        label="toy-math",
        cache_dir=str(files / "hf-cache"),
    )
    a = load_hf_examples(spec, stage=1, split="eval", start_id=0, n=10, seed=7)
    b = load_hf_examples(spec, stage=1, split="eval", start_id=0, n=10, seed=7)
    c = load_hf_examples(spec, stage=1, split="eval", start_id=0, n=10, seed=8)
    assert a.equals(b) and not a.equals(c)
    assert a.num_rows == 10 and set(a.column("prompt").to_pylist()) == {""}
    assert set(a.column("answer").to_pylist()) <= {r["question"][:9] for r in ROWS}
    assert set(a.column("skill").to_pylist()) == {"math"} and a.column("tags").to_pylist()[0] == ["toy-math"]
    with pytest.raises(ValueError, match="asked for 31 examples, but it has 30 usable rows"):
        load_hf_examples(spec, stage=1, split="eval", start_id=0, n=31)


def test_empty_answers_are_dropped_and_null_prompts_are_empty(tmp_path):
    rows = [{"q": None, "a": "x"}, {"q": "p", "a": ""}, {"q": "p2", "a": None}, {"q": "p3", "a": "y"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"path": "json", "data_files": str(tmp_path / "d.jsonl"), "columns": {"prompt": "q", "answer": "a"},
            "cache_dir": str(tmp_path / "c")}  # fmt: skip
    t = load_hf_examples(spec, stage=1, split="pool", start_id=0)
    assert t.column("prompt").to_pylist() == ["", "p3"] and t.column("answer").to_pylist() == ["x", "y"]


def test_clear_errors(files):
    base = {"path": "json", "data_files": str(files / "data.jsonl"), "cache_dir": str(files / "hf-cache")}
    with pytest.raises(ValueError, match=r"column\(s\) \['answer_text'\] not in the dataset"):
        load_hf_examples({**base, "columns": {"answer": "answer_text"}}, stage=1, split="pool", start_id=0)
    with pytest.raises(FileNotFoundError, match="data_files not found"):
        load_hf_examples(
            {**base, "data_files": str(files / "nope-*.jsonl"), "columns": {"text": "question"}},
            stage=1,
            split="pool",
            start_id=0,
        )
    nested = files / "nested.jsonl"
    nested.write_text(json.dumps({"msgs": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="not text"):
        load_hf_examples(
            {**base, "data_files": str(nested), "columns": {"text": "msgs"}}, stage=1, split="pool", start_id=0
        )
    with pytest.raises(ValidationError, match="exactly one of 'answer'"):
        HFSourceConfig(path="json", data_files="x", columns={"prompt": "q"})
    with pytest.raises(ValidationError, match="a 'text' source has no prompt"):
        HFSourceConfig(path="json", data_files="x", columns={"prompt": "q", "text": "t"})
    with pytest.raises(ValidationError, match="give data_files"):
        HFSourceConfig(path="parquet", columns={"text": "t"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        HFSourceConfig(path="json", data_files="x", columns={"text": "t"}, shuffle=True)
    with pytest.raises(ValueError, match="split must be one of"):
        load_hf_examples({**base, "columns": {"text": "question"}}, stage=1, split="train", start_id=0)
