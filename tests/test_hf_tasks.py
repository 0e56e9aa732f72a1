"""HF dataset sources on local json/jsonl/parquet/csv files the test writes (no hub, no network)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from lhas_ray.config import HFSourceConfig
from lhas_ray.tasks.hf import load_hf_examples
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


def test_clip_takes_every_row_when_fewer_than_n(files):
    spec = {"path": "json", "data_files": str(files / "data.jsonl"), "columns": {"text": "question"},
            "cache_dir": str(files / "hf-cache")}  # fmt: skip
    assert load_hf_examples(spec, stage=0, split="eval", start_id=0, n=100, clip=True).num_rows == 30
    assert load_hf_examples(spec, stage=0, split="eval", start_id=0, n=7, clip=True).num_rows == 7


def _hf_config(tmp_path, budget: int) -> dict:
    """An hf stage whose pool holds 40 clean rows plus 5 eval rows and 1 general row, re-cased and re-spaced."""
    evals = [{"q": f"Question {i}: what is {i} times 3?", "a": str(3 * i)} for i in range(12)]
    general = [{"q": f"Name the colour number {i}.", "a": f"colour {i}"} for i in range(7)]
    clean = [{"q": f"Pool item {i}: what is {i} times 7?", "a": str(7 * i)} for i in range(40)]
    planted = [{"q": "  " + r["q"].upper().replace(" ", " \t "), "a": f" {r['a']}\n"} for r in evals[:5]]
    planted.append({"q": general[3]["q"].lower(), "a": "  COLOUR   3 "})
    for name, rows in (("eval", evals), ("general", general), ("pool", clean + planted)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def spec(name):
        return {"path": "json", "data_files": str(tmp_path / f"{name}.jsonl"), "columns": {"prompt": "q", "answer": "a"},
                "skill": "math", "cache_dir": str(tmp_path / "hf-cache")}  # fmt: skip

    stage = {
        "name": "math",
        "source": "hf",
        "targets": ["math"],
        "budget": budget,
        "pool": {"size": 46},
        "eval_size": 8,
        "probe_size": 4,  # eval + probe: all 12 eval rows
        "ood": [],
        "hf": {"pool": spec("pool"), "eval": spec("eval"), "general": {"colours": spec("general")}},
    }
    return {
        "stages": [stage],
        "selectors": [{"name": "random"}],
        "evaluation": {"accuracy": "token", "general_size": 10},
    }


def test_hf_pool_loses_exactly_the_rows_that_repeat_held_out_rows(tmp_path, caplog):
    from lhas_ray.config import config_from_dict
    from lhas_ray.tasks.suite import build_suite

    caplog.set_level("INFO", logger="lhas_ray.tasks")
    suite = build_suite(config_from_dict(_hf_config(tmp_path, budget=10)))
    stage = suite.stages[0]
    g = suite.general.to_pylist()
    assert len(g) == 7 and {r["skill"] for r in g} == {"colours"}  # up to general_size (10) rows: all 7
    assert {r["split"] for r in g} == {"eval"} and {r["stage"] for r in g} == {0} and g[0]["tags"] == ["general"]

    def norm(s):
        return " ".join(s.lower().split())

    held = {
        (norm(r["prompt"]), norm(r["answer"])) for t in (stage.eval, stage.probe, suite.general) for r in t.to_pylist()
    }
    pool_rows = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    kept = sorted(r["q"] for r in pool_rows if (norm(r["q"]), norm(r["a"])) not in held)
    assert len(pool_rows) - len(kept) == 6
    assert suite.removed_from_pools == {1: 6}
    assert sorted(stage.pool.column("prompt").to_pylist()) == kept
    assert "removed 6 pool rows" in caplog.text
    ids = [i for t in (stage.pool, stage.eval, stage.probe, suite.general) for i in t.column("example_id").to_pylist()]
    assert len(set(ids)) == len(ids)


def test_hf_pool_too_small_after_removal_names_the_stage(tmp_path):
    from lhas_ray.config import config_from_dict
    from lhas_ray.tasks.suite import build_suite

    cfg = config_from_dict(_hf_config(tmp_path, budget=41))  # 46 rows fit the budget; 40 after removal do not
    with pytest.raises(ValueError, match=r"stage 'math': removing 6 pool rows .* leaves 40, fewer than the budget"):
        build_suite(cfg)


def test_hf_general_specs_are_validated_like_ood(tmp_path):
    from lhas_ray.config import ConfigError, config_from_dict

    raw = _hf_config(tmp_path, budget=10)
    raw["stages"][0]["hf"]["general"]["bad"] = {"path": "json", "columns": {"text": "q"}}
    with pytest.raises(ConfigError, match="give data_files"):
        config_from_dict(raw)
