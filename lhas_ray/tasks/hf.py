"""Any Hugging Face dataset as examples in the one schema: a ``datasets.load_dataset`` spec plus a column mapping.

On a cluster the spec names a hub dataset (``path: openai/gsm8k, name: main, split: train``); offline it names local
files through a packaged builder (``path: json, data_files: data/*.jsonl``; also ``parquet``, ``csv``, ``text``).
The mapping says which columns are the prompt and the answer (``columns: {prompt: question, answer: answer}``) or
that one column is plain text for language modelling (``columns: {text: content}``); ``skill`` may name a column of
capability tags. Rows are sampled with a seed, and the columns are read as Arrow, not row by row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lhas_ray.config.preflight import data_file_patterns, matched_files
from lhas_ray.config.sources import HFSourceConfig
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA, SPLITS, validate_examples


def _check_files(spec: HFSourceConfig) -> None:
    """Fail before datasets does, naming every local data file or glob that matches nothing."""
    missing = [f for f in data_file_patterns(spec) if not matched_files(f)]
    if missing:
        raise FileNotFoundError(f"hf source {spec.source!r}: data_files not found: {missing}")


def load_hf_table(spec: HFSourceConfig | Mapping[str, Any]) -> pa.Table:
    """The dataset split as one Arrow table (only the mapped columns), via ``datasets.load_dataset``."""
    import datasets

    spec = HFSourceConfig.model_validate(spec) if isinstance(spec, Mapping) else spec
    _check_files(spec)
    data_files = spec.data_files
    if isinstance(data_files, str):
        data_files = os.path.expanduser(data_files)
    ds = datasets.load_dataset(
        spec.path,
        spec.name,
        data_files=data_files,
        split=spec.split,
        revision=spec.revision,
        cache_dir=spec.cache_dir,
    )
    missing = [c for c in spec.columns.used() if c not in ds.column_names]
    if missing:
        raise ValueError(f"hf source {spec.source!r}: column(s) {missing} not in the dataset; it has {ds.column_names}")
    return ds.select_columns(spec.columns.used()).with_format("arrow")[:]


def _text_column(table: pa.Table, column: str, where: str) -> pa.ChunkedArray:
    """A column as strings: numbers and bools are cast, nested values (lists, dicts) are an error."""
    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    if pa.types.is_nested(col.type) or pa.types.is_binary(col.type):
        raise ValueError(f"{where}: column {column!r} holds {col.type}, not text; map a text column")
    return pc.cast(col, pa.string())


def usable_rows(table: pa.Table, spec: HFSourceConfig) -> pa.Table:
    """The rows with something to learn: answer/text neither null nor empty."""
    answer = _text_column(table, spec.columns.answer or spec.columns.text, f"hf source {spec.source!r}")
    return table.filter(pc.and_(pc.is_valid(answer), pc.greater(pc.utf8_length(pc.fill_null(answer, "")), 0)))


def to_examples(table: pa.Table, spec: HFSourceConfig, *, stage: int, split: str, start_id: int) -> pa.Table:
    """Usable rows (``usable_rows``) in EXAMPLE_SCHEMA, ids start_id, start_id + 1, ... in row order."""
    where = f"hf source {spec.source!r}"
    cols, count = spec.columns, table.num_rows
    answer = _text_column(table, cols.answer or cols.text, where)
    if spec.max_chars is not None:
        answer = pc.utf8_slice_codeunits(answer, 0, spec.max_chars)
    prompt = (
        pc.fill_null(_text_column(table, cols.prompt, where), "")
        if cols.prompt
        else pa.array([""] * count, pa.string())
    )
    skill = (
        pc.fill_null(_text_column(table, cols.skill, where), spec.skill)
        if cols.skill
        else pa.array([spec.skill] * count, pa.string())
    )
    out = pa.table(
        {
            "example_id": pa.array(start_id + np.arange(count, dtype=np.int64)),
            "stage": pa.array(np.full(count, stage, dtype=np.int32)),
            "skill": skill,
            "prompt": prompt,
            "answer": answer,
            "split": pa.array([split] * count, pa.string()),
            "tags": pa.array([[spec.source]] * count, pa.list_(pa.string())),
        }
    )
    return validate_examples(out, where).cast(EXAMPLE_SCHEMA)


def load_hf_examples(
    spec: HFSourceConfig | Mapping[str, Any],
    *,
    stage: int,
    split: str,
    start_id: int,
    n: int | None = None,
    seed: int = 0,
    clip: bool = False,
) -> pa.Table:
    """Examples in EXAMPLE_SCHEMA from a dataset spec: all rows, or n sampled with ``seed``; ids from start_id.

    Rows whose answer/text is null or empty are dropped first (nothing to learn from them); a null prompt is empty.
    ``clip``: n is an upper bound (all usable rows when there are fewer), not an error.
    """
    spec = HFSourceConfig.model_validate(spec) if isinstance(spec, Mapping) else spec
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    table = usable_rows(load_hf_table(spec), spec)
    if n is not None and clip:
        n = min(n, table.num_rows)
    if n is not None and n > table.num_rows:
        raise ValueError(f"hf source {spec.source!r}: asked for {n} examples, but it has {table.num_rows} usable rows")
    if n is not None:
        rows = np.sort(np.random.default_rng([seed, stage]).choice(table.num_rows, size=n, replace=False))
        table = table.take(pa.array(rows, pa.int64()))
    return to_examples(table, spec, stage=stage, split=split, start_id=start_id)
