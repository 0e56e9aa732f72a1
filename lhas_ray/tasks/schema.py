"""One example schema for every source (built-in suite, Hugging Face datasets, files): a pyarrow table with these columns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from lhas_ray.config import ExperimentConfig

SPLITS = ("pool", "eval", "ood", "probe")
# rows per Ray Data block of a pool: Ray Data hands whole blocks to a scoring actor, so a pool of few large blocks
# (one per file) would be scored by one actor while the others wait
POOL_BLOCK_ROWS = 1024


def pool_key(cfg: ExperimentConfig, seed: int, t: int) -> str:
    """The Ray Dataset name of stage t's pool for trajectory seed ``seed`` (seeds that share a data draw share it)."""
    return f"pool_d{cfg.data_seed(seed)}_{t}"


EXAMPLE_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.int64(), nullable=False),  # unique within a run
        pa.field("stage", pa.int32(), nullable=False),  # the stage this example belongs to (1-based)
        pa.field("skill", pa.string(), nullable=False),  # capability tag; "text" for plain language modelling
        pa.field("prompt", pa.string(), nullable=False),  # conditioning text (no loss on it); may be empty
        pa.field("answer", pa.string(), nullable=False),  # the text the model must produce; loss and accuracy on it
        pa.field("split", pa.string(), nullable=False),  # one of SPLITS
        pa.field("tags", pa.list_(pa.string()), nullable=False),  # e.g. target/related/unrelated, noise, duplicate
    ]
)


def validate_examples(table: pa.Table, where: str) -> pa.Table:
    """Cast a table to EXAMPLE_SCHEMA, or raise naming the source and what is wrong with it."""
    missing = [f.name for f in EXAMPLE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; an example table needs {EXAMPLE_SCHEMA.names}")
    table = table.select(EXAMPLE_SCHEMA.names).cast(EXAMPLE_SCHEMA)
    if table.num_rows and len(set(table.column("example_id").to_pylist())) != table.num_rows:
        raise ValueError(f"{where}: duplicate example_id values")
    bad = set(table.column("split").to_pylist()) - set(SPLITS)
    if bad:
        raise ValueError(f"{where}: unknown split(s) {sorted(bad)}; allowed: {list(SPLITS)}")
    return table


def normalize_text(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Text as compared for leaks: lowercase, every run of whitespace one space, stripped (vectorised)."""
    values = pc.fill_null(pc.cast(values, pa.string()), "")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(values), r"[\s\v\x{85}\pZ]+", " "))


def text_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash per row of the normalised ``prompt + "\\x00" + answer`` (uint64, same text: same hash)."""
    import pandas as pd

    if table.num_rows == 0:
        return np.array([], dtype=np.uint64)
    joined = pc.binary_join_element_wise(
        normalize_text(table.column("prompt")), normalize_text(table.column("answer")), "\x00"
    )
    return pd.util.hash_array(np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object), categorize=False)


def heldout_hashes(heldout: list[pa.Table | None]) -> np.ndarray:
    """The distinct ``text_hashes`` of every held-out row (uint64; empty when there is none)."""
    held = [text_hashes(t) for t in heldout if t is not None and t.num_rows]
    return np.unique(np.concatenate(held)) if held else np.array([], dtype=np.uint64)


def repeats(table: pa.Table, hashes: np.ndarray) -> np.ndarray:
    """Which rows of ``table`` repeat a held-out row (their hash is in ``hashes``), as a boolean mask."""
    if not hashes.size or not table.num_rows:
        return np.zeros(table.num_rows, dtype=bool)
    return np.isin(text_hashes(table), hashes)


def row_slices(table: pa.Table, size: int) -> Iterator[pa.Table]:
    """``table`` cut into consecutive zero-copy slices of ``size`` rows (the last may be shorter; none if empty)."""
    return (table.slice(start, size) for start in range(0, table.num_rows, size))


def rows_with_ids(tables: Iterable[pa.Table], ids: np.ndarray) -> pa.Table | None:
    """The rows of ``tables`` whose example_id is one of ``ids``, in the tables' order; None when there is no table."""
    wanted = pa.array(np.asarray(ids, dtype=np.int64))
    parts = [t.filter(pc.is_in(t.column("example_id"), value_set=wanted)) for t in tables]
    return pa.concat_tables(parts, promote_options="default") if parts else None


def drop_leaks(pool: pa.Table, heldout: list[pa.Table]) -> tuple[pa.Table, int]:
    """The pool without the rows whose normalised prompt + answer hash equals a held-out row's, and how many went."""
    leak = repeats(pool, heldout_hashes(heldout))
    n = int(leak.sum())
    return (pool.filter(pa.array(~leak)) if n else pool), n
