"""The output folder's contract: the schema of every table lhas_ray writes, declared once.

Long tables (``metrics``, ``curves``, ``timings``, ``terms``) are written one part per (selector, seed, stage) unit;
``ResultStore.write_part`` casts each part to its schema here and refuses a part whose columns differ. The report's
tables (``trajectory``, ``ranking``), the confirmation, the selections and the pool-leak counts are declared here too,
and the writers, the tests and the benchmarks all import them from this module.
"""

from __future__ import annotations

import pyarrow as pa

_KEYS = [pa.field("selector", pa.string()), pa.field("seed", pa.int64()), pa.field("stage", pa.int64())]

METRICS = pa.schema(
    [
        *_KEYS,
        pa.field("eval_set", pa.string()),  # eval/stage<j>, ood/stage<j>-<kind>, general
        pa.field("eval_stage", pa.int64()),  # j for eval/stage<j>, null for OOD and general sets
        pa.field("skill", pa.string()),  # a skill, or 'all'
        pa.field("metric", pa.string()),  # accuracy | loss
        pa.field("value", pa.float64()),
    ]
)
CURVES = pa.schema(
    [
        *_KEYS,
        pa.field("step", pa.int64()),
        pa.field("split", pa.string()),  # train | eval | probe | probe_train
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
    ]
)
TIMINGS = pa.schema([*_KEYS, pa.field("phase", pa.string()), pa.field("seconds", pa.float64())])
TERMS = pa.schema(  # each LHAS term's contribution to J of the selection
    [
        *_KEYS,
        pa.field("term", pa.string()),  # utility | coverage | alignment | concentration
        pa.field("weight", pa.float64()),
        pa.field("unit", pa.float64()),
        pa.field("contribution", pa.float64()),
    ]
)
LONG_TABLES: dict[str, pa.Schema] = {"metrics": METRICS, "curves": CURVES, "timings": TIMINGS, "terms": TERMS}

SELECTIONS = pa.schema(  # selections/<selector>/s<seed>/stage<t>.parquet, in greedy (or ranking) order
    [
        pa.field("example_id", pa.int64()),
        pa.field("skill", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("order", pa.int64()),
    ]
)
TRAJECTORY = pa.schema([*_KEYS, pa.field("metric", pa.string()), pa.field("value", pa.float64())])
RANKING = pa.schema(
    [
        pa.field("kind", pa.string()),  # rank | tau | difference | myopia | family | note
        pa.field("metric", pa.string()),
        pa.field("stage", pa.int64()),
        pa.field("selector", pa.string()),
        pa.field("baseline", pa.string()),
        pa.field("statistic", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("lo", pa.float64()),
        pa.field("hi", pa.float64()),
        pa.field("note", pa.string()),
    ]
)
CONFIRMATION = pa.schema(
    [
        pa.field("sample", pa.string()),  # held-out | in-sample
        pa.field("family", pa.string()),  # headline | metrics | "" (in-sample rows are not tested)
        pa.field("baseline", pa.string()),
        pa.field("role", pa.string()),  # random | best myopic | named in tune.confirm_baselines
        pa.field("metric", pa.string()),  # objective (tune.objective), immediate_score (tune.immediate) or a metric
        pa.field("higher_is_better", pa.bool_()),
        pa.field("n_seeds", pa.int64()),
        pa.field("tuned", pa.float64()),  # mean over seeds
        pa.field("base", pa.float64()),
        pa.field("diff", pa.float64()),  # tuned - base, mean over seeds (not oriented)
        pa.field("lo", pa.float64()),
        pa.field("hi", pa.float64()),
        pa.field("alternative", pa.string()),
        pa.field("p_raw", pa.float64()),
        pa.field("p_holm", pa.float64()),
    ]
)
POOL_LEAKS = pa.schema(
    [pa.field("seed", pa.int64()), pa.field("stage", pa.int64()), pa.field("rows_removed", pa.int64())]
)


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """``table`` with the schema's column order and types; ValueError naming ``what`` and the columns that differ."""
    names, want = set(table.column_names), set(schema.names)
    if names != want:
        raise ValueError(
            f"{what}: columns differ from the declared schema (lhas_ray/schemas.py): missing "
            f"{sorted(want - names)}, unexpected {sorted(names - want)}"
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ValueError(f"{what}: cannot cast to the declared schema (lhas_ray/schemas.py): {e}") from None


def rows_table(rows: list[dict], schema: pa.Schema, **keys) -> pa.Table:
    """Long-format row dicts plus the unit's key columns, as a table of ``schema``."""
    return pa.Table.from_pylist([{**keys, **r} for r in rows], schema=schema)
