"""One example schema for every source (built-in suite, Hugging Face datasets, files): a pyarrow table with these columns."""

from __future__ import annotations

import pyarrow as pa

SPLITS = ("pool", "eval", "ood", "probe")

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
