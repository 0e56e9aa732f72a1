"""`lhas-ray export`: a stored selection back as the examples themselves, in selection order, in three formats."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lhas_ray import cli
from lhas_ray.config import config_from_dict, dump_config
from lhas_ray.export import ExportRequest, export_selection
from lhas_ray.schemas import SELECTIONS
from lhas_ray.store import ResultStore
from lhas_ray.tasks.suite import build_suite
from tests.helpers import micro_config


@pytest.fixture
def run_with_a_selection(tmp_path):
    """A run folder holding its config and one selection (stage 2 of loss_high, seed 0): 20 pool rows picked in a
    scrambled order, as the protocol writes them; returns (folder, the picked pool rows in selection order)."""
    cfg = config_from_dict(micro_config())
    out = str(tmp_path / "run")
    store = ResultStore(out)
    store.write_bytes("config.yaml", dump_config(cfg).encode())
    pool = build_suite(cfg, 0).stages[1].pool
    rows = np.random.default_rng(3).choice(pool.num_rows, size=20, replace=False)
    picked = pool.take(pa.array(rows))
    table = pa.table(
        {
            "example_id": picked.column("example_id"),
            "skill": picked.column("skill"),
            "tags": picked.column("tags"),
            "order": pa.array(np.arange(20), pa.int64()),
        },
        schema=SELECTIONS,
    )
    store.write_parquet("selections/loss_high/s0/stage2.parquet", table)
    return out, picked.to_pandas()


@pytest.mark.parametrize("fmt", ["hf", "jsonl", "parquet"])
def test_export_round_trips_the_examples_in_selection_order(run_with_a_selection, tmp_path, fmt):
    import datasets

    out, picked = run_with_a_selection
    to = str(tmp_path / f"export_{fmt}")
    args = ["export", out, "--selector", "loss_high", "--seed", "0", "--stage", "2", "--to", to, "--format", fmt]
    assert cli.main(args) == 0
    if fmt == "hf":
        ds = datasets.load_from_disk(to)
    else:
        ds = datasets.load_dataset("json" if fmt == "jsonl" else "parquet", data_files=os.path.join(to, f"data.{fmt}"))
        ds = ds["train"]
    assert ds["example_id"] == picked["example_id"].tolist()
    assert ds["order"] == list(range(20))
    assert ds["prompt"] == picked["prompt"].tolist() and ds["answer"] == picked["answer"].tolist()
    assert ds["skill"] == picked["skill"].tolist() and ds["tags"] == [list(t) for t in picked["tags"]]
    assert set(ds["selector"]) == {"loss_high"} and set(ds["stage"]) == {2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--selector": "oracle"}, "unknown selector 'oracle'; this run's selectors: ['random', 'loss_high']"),
        ({"--seed": "5"}, "unknown seed 5; this run's seeds: [0]"),
        ({"--stage": "3"}, "stage 3 is out of range; this run's stages: 1..2"),
        ({"--stage": "1"}, "has no committed selection yet"),
        ({"--format": "csv"}, "invalid choice: 'csv'"),
    ],
)
def test_bad_arguments_are_refused_with_the_allowed_values(run_with_a_selection, tmp_path, capsys, change, message):
    out, _ = run_with_a_selection
    args = {"--selector": "loss_high", "--seed": "0", "--stage": "2", "--to": str(tmp_path / "x"), **change}
    try:
        code = cli.main(["export", out, *[v for kv in args.items() for v in kv]])
    except SystemExit as e:  # argparse refuses a format outside its choices
        code = e.code
    assert code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_not_a_run_folder_and_a_used_destination_are_refused(run_with_a_selection, tmp_path, capsys):
    out, _ = run_with_a_selection
    base = ["--selector", "loss_high", "--seed", "0", "--stage", "2"]
    assert cli.main(["export", str(tmp_path), *base, "--to", str(tmp_path / "y")]) == 2
    assert "is not a lhas_ray run folder" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert cli.main(["export", out, *base, "--to", str(used)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert os.listdir(used) == ["keep.txt"]


def test_a_changed_data_source_is_refused_not_exported_wrong(run_with_a_selection, tmp_path):
    out, _ = run_with_a_selection
    path = os.path.join(out, "selections/loss_high/s0/stage2.parquet")
    table = pq.read_table(path)
    skills = table.column("skill").to_pylist()
    skills[4] = "not-" + skills[4]
    pq.write_table(table.set_column(1, "skill", pa.array(skills)), path)
    with pytest.raises(ValueError, match="data source changed"):
        export_selection(ExportRequest(out, "loss_high", 0, 2, str(tmp_path / "z")))


def test_push_to_hub_hands_the_same_dataset_to_datasets(run_with_a_selection, tmp_path, monkeypatch):
    import datasets

    out, picked = run_with_a_selection
    pushed = {}
    monkeypatch.setattr(
        datasets.Dataset, "push_to_hub", lambda self, repo: pushed.update(repo=repo, ids=self["example_id"])
    )
    req = ExportRequest(out, "loss_high", 0, 2, str(tmp_path / "hub"), format="parquet")
    export_selection(req, push_to_hub="me/loss-high-stage2")
    assert pushed == {"repo": "me/loss-high-stage2", "ids": picked["example_id"].tolist()}
