"""A pool that never sits whole in the driver: parquet files read batch by batch (``hf.pool.stream: true``).

The driver scans the files once, a batch at a time (``scan_pool``): it counts each file's usable rows and drops the
rows that repeat a held-out row, as an in-memory pool does. Workers and scoring actors then read the same files
through Ray Data, one read task per file (``streamed_dataset``). Ids are positional over the usable rows, exactly as
``load_hf_examples`` numbers the same files in memory, which is why the tasks read the files themselves: Ray Data's
``read_parquet`` offers only a hash of path and row (``include_row_hash``), not the row's position.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lhas_ray.config.sources import HFSourceConfig
from lhas_ray.tasks import schema
from lhas_ray.tasks.hf import to_examples, usable_rows
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA, POOL_BLOCK_ROWS, heldout_hashes, repeats

BATCH_ROWS = 65_536  # rows read at a time: bounds the reader's memory, whatever the file's row groups


@dataclass(frozen=True)
class StreamedPool:
    """Where a streamed pool's rows are and what the driver's scan found (small: it travels to every worker)."""

    spec: HFSourceConfig
    stage: int
    files: tuple[str, ...]
    first_ids: tuple[int, ...]  # example_id of each file's first usable row
    heldout: np.ndarray  # uint64 hashes of the held-out rows (heldout_hashes); pool rows with these are dropped
    rows: int  # rows kept
    removed: int  # usable rows dropped for repeating a held-out row


def parquet_files(spec: HFSourceConfig) -> list[str]:
    """The files of ``data_files`` in the order they are numbered: each pattern's matches sorted, patterns in order."""
    patterns = [spec.data_files] if isinstance(spec.data_files, str) else list(spec.data_files)
    files, missing = [], []
    for pattern in patterns:
        if "://" in pattern:
            files.append(pattern)
            continue
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        files += found
        if not found:
            missing.append(pattern)
    if missing:
        raise FileNotFoundError(f"hf source {spec.source!r}: data_files not found: {missing}")
    return files


def _open(path: str) -> pq.ParquetFile:
    """A local path, or a URI any pyarrow filesystem reads (s3://, gs://, hdfs://)."""
    if "://" not in path:
        return pq.ParquetFile(path)
    fs, inner = pafs.FileSystem.from_uri(path)
    return pq.ParquetFile(fs.open_input_file(inner))


def _read_columns(spec: HFSourceConfig, reader: pq.ParquetFile, path: str) -> list[str]:
    """The mapped columns, checked against the file's schema (a footer read)."""
    names = reader.schema_arrow.names
    if missing := [c for c in spec.columns.used() if c not in names]:
        raise ValueError(f"hf source {spec.source!r}: column(s) {missing} not in {path}; it has {names}")
    return spec.columns.used()


def file_batches(spec: HFSourceConfig, path: str) -> Iterator[pa.Table]:
    """A file's usable rows, BATCH_ROWS raw rows at a time, only the mapped columns."""
    reader = _open(path)
    for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=_read_columns(spec, reader, path)):
        yield usable_rows(pa.Table.from_batches([batch]), spec)


def file_examples(spec: HFSourceConfig, stage: int, path: str, first_id: int, heldout: np.ndarray):
    """A file's examples in EXAMPLE_SCHEMA, a batch at a time: positional ids from ``first_id``, held-out repeats
    dropped (their ids stay unused, as in memory)."""
    next_id = first_id
    for rows in file_batches(spec, path):
        examples = to_examples(rows, spec, stage=stage, split="pool", start_id=next_id)
        next_id += rows.num_rows
        yield examples.filter(pa.array(~repeats(examples, heldout)))


def scan_pool(spec: HFSourceConfig, stage: int, start_id: int, heldout: list[pa.Table]) -> StreamedPool:
    """One pass over the files in the driver, a batch at a time: usable rows per file and held-out repeats."""
    hashes = heldout_hashes(heldout)
    files = parquet_files(spec)
    first_ids, kept, removed, next_id = [], 0, 0, start_id
    for path in files:
        first_ids.append(next_id)
        for rows in file_batches(spec, path):
            next_id += rows.num_rows
            leak = int(repeats(to_examples(rows, spec, stage=stage, split="pool", start_id=0), hashes).sum())
            kept += rows.num_rows - leak
            removed += leak
    return StreamedPool(spec, stage, tuple(files), tuple(first_ids), hashes, kept, removed)


def iter_pool(pool: StreamedPool) -> Iterator[pa.Table]:
    """Every example of the pool in id order, a batch at a time (the driver's bounded-memory read)."""
    for path, first in zip(pool.files, pool.first_ids, strict=True):
        yield from file_examples(pool.spec, pool.stage, path, first, pool.heldout)


def rows_at(pool: StreamedPool, positions: np.ndarray) -> pa.Table:
    """The kept rows at these sorted positions (0 = the pool's first kept row), read a batch at a time."""
    positions = np.asarray(positions, dtype=np.int64)
    parts, seen = [], 0
    for batch in iter_pool(pool):
        here = positions[(positions >= seen) & (positions < seen + batch.num_rows)] - seen
        if here.size:
            parts.append(batch.take(pa.array(here)))
        seen += batch.num_rows
    return pa.concat_tables(parts) if parts else EXAMPLE_SCHEMA.empty_table()


def rows_with_ids(pool: StreamedPool, ids: np.ndarray) -> pa.Table:
    """The pool rows with these example ids, in id order, read a batch at a time (``lhas-ray export``)."""
    rows = schema.rows_with_ids(iter_pool(pool), ids)
    return EXAMPLE_SCHEMA.empty_table() if rows is None else rows


def _read_file(item: dict, pool: StreamedPool) -> Iterator[pa.Table]:
    """Ray Data read task: one file's examples, read a batch at a time and yielded in blocks of POOL_BLOCK_ROWS."""
    for path, first in zip(item["path"].to_pylist(), item["first_id"].to_pylist(), strict=True):
        for batch in file_examples(pool.spec, pool.stage, path, first, pool.heldout):
            yield from schema.row_slices(batch, POOL_BLOCK_ROWS)


def streamed_dataset(pool: StreamedPool):
    """The pool as a lazy Ray Dataset: one read task per file, each streaming its file a batch at a time."""
    import ray.data

    items = [{"path": p, "first_id": f} for p, f in zip(pool.files, pool.first_ids, strict=True)]
    # reading is I/O, and the Train workers that consume it hold their CPUs: a read task reserving a CPU would wait
    # forever where training takes every CPU (2 workers on 2 cores), so it reserves none
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_file, batch_size=1, batch_format="pyarrow", fn_kwargs={"pool": pool}, num_cpus=0
    )
