"""``lhas-ray export``: one selection of a run (selector, seed, stage) as a dataset others can train on.

A run stores each selection as example ids in selection order (``selections/<selector>/s<seed>/stage<t>.parquet``),
not the text. The text is the run's own data draw, rebuilt from its ``config.yaml`` (same config and seed, same
pool byte for byte); every selected row's skill and tags are checked against the stored selection, so a data source
that changed since the run is refused instead of exported wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from lhas_ray.config import ExperimentConfig, config_from_dict
from lhas_ray.store import ResultStore

FORMATS = ("hf", "jsonl", "parquet")


@dataclass(frozen=True)
class ExportRequest:
    """Which selection to export, where to, in which format; checked by ``check_request`` before any work."""

    out: str
    selector: str
    seed: int
    stage: int
    to: str
    format: str = "hf"


def check_request(req: ExportRequest) -> ExperimentConfig:
    """The run's config, or ValueError naming what is wrong and what is allowed (never touches ``req.to``)."""
    store = ResultStore(req.out)
    if not store.is_run():
        raise ValueError(f"{req.out} is not a lhas_ray run folder (it has no config.yaml)")
    cfg = config_from_dict(yaml.safe_load(store.read_bytes("config.yaml")), source=store.path("config.yaml"))
    keys = [s.key for s in cfg.selectors]
    if req.selector not in keys:
        raise ValueError(f"unknown selector {req.selector!r}; this run's selectors: {keys}")
    if req.seed not in cfg.seeds:
        raise ValueError(f"unknown seed {req.seed}; this run's seeds: {cfg.seeds}")
    if not 1 <= req.stage <= len(cfg.stages):
        raise ValueError(f"stage {req.stage} is out of range; this run's stages: 1..{len(cfg.stages)}")
    if not store.exists(selection_path(req)):
        raise ValueError(
            f"{req.selector} seed {req.seed} stage {req.stage} has no committed selection yet in {req.out}"
        )
    if req.format not in FORMATS:
        raise ValueError(f"unknown format {req.format!r}; allowed: {list(FORMATS)}")
    if os.path.exists(req.to) and (not os.path.isdir(req.to) or os.listdir(req.to)):
        raise ValueError(f"--to {req.to} exists and is not an empty folder; nothing was written")
    return cfg


def selection_path(req: ExportRequest) -> str:
    return f"selections/{req.selector}/s{req.seed}/stage{req.stage}.parquet"


def selected_examples(req: ExportRequest, cfg: ExperimentConfig) -> pa.Table:
    """The selected pool rows in selection order: example_id, order, prompt, answer, skill, tags, and the unit."""
    from lhas_ray.tasks.suite import build_suite

    store = ResultStore(req.out)
    picked = store.read_parquet(selection_path(req)).sort_by("order")
    stage = build_suite(cfg, req.seed).stages[req.stage - 1]
    if stage.stream is not None:  # a streamed pool: only the picked rows are read into memory
        from lhas_ray.tasks.streamed import rows_with_ids

        pool = rows_with_ids(stage.stream, picked.column("example_id").to_numpy())
    else:
        pool = stage.pool
    at = pc.index_in(picked.column("example_id"), value_set=pool.column("example_id"))
    if at.null_count:
        raise ValueError(
            f"{at.null_count} selected example ids are not in the pool rebuilt from {store.path('config.yaml')}: "
            "its data source changed since the run"
        )
    rows = pool.take(at)
    same = pc.all(pc.equal(rows.column("skill"), picked.column("skill"))).as_py()
    if not same or rows.column("tags").to_pylist() != picked.column("tags").to_pylist():
        raise ValueError("the rebuilt pool's skills or tags differ from the stored selection: the data source changed")
    n = rows.num_rows
    return pa.table(
        {
            "example_id": rows.column("example_id"),
            "order": picked.column("order"),
            "prompt": rows.column("prompt"),
            "answer": rows.column("answer"),
            "skill": rows.column("skill"),
            "tags": rows.column("tags"),
            "selector": pa.array([req.selector] * n, pa.string()),
            "seed": pa.array([req.seed] * n, pa.int64()),
            "stage": pa.array([req.stage] * n, pa.int64()),
        }
    )


def export_selection(req: ExportRequest, push_to_hub: str | None = None) -> str:
    """Write the selection to ``req.to`` in ``req.format`` (``hf``: ``datasets.load_from_disk`` opens it; ``jsonl``
    and ``parquet``: one ``data.*`` file for ``load_dataset``); optionally push it to the Hub. Returns the folder."""
    cfg = check_request(req)
    table = selected_examples(req, cfg)
    os.makedirs(req.to, exist_ok=True)
    if req.format == "parquet":
        pq.write_table(table, os.path.join(req.to, "data.parquet"))
    elif req.format == "jsonl":
        table.to_pandas().to_json(os.path.join(req.to, "data.jsonl"), orient="records", lines=True, force_ascii=False)
    else:
        as_dataset(table).save_to_disk(req.to)
    if push_to_hub:
        as_dataset(table).push_to_hub(push_to_hub)
    return req.to


def as_dataset(table: pa.Table):
    """The table as a ``datasets.Dataset`` (Arrow-backed, no copy through Python rows)."""
    import datasets

    return datasets.Dataset(datasets.table.InMemoryTable(table))
