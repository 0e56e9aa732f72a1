"""Feature-table checks: every bad input fails with a clear ValueError before a selector does any work.

A valid table becomes a ``Pool``: numpy arrays in canonical order (sorted by ``example_id``), so no result can depend
on the table's row order. Fixed-size-list columns are read zero-copy when the table is already sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lhas_ray.selection.context import SelectionContext

SCALAR_COLUMNS = ("loss", "grad_norm", "el2n", "quality")
VECTOR_COLUMNS = ("grad", "emb")
FEATURE_COLUMNS = (*SCALAR_COLUMNS, *VECTOR_COLUMNS, "skill")
CONTEXT_FIELDS = ("target_grads", "target_embs", "proxy_grad")


@dataclass
class Pool:
    """A validated candidate pool in canonical order: ``example_id`` ascending and every column aligned to it."""

    example_id: np.ndarray  # int64 [n], strictly increasing
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # scalars float64 [n], vectors float32 [n, d]
    skill_names: np.ndarray | None = None  # skill column as integer codes in columns['skill']; names here
    context: SelectionContext = field(default_factory=SelectionContext)  # arrays checked and as float32

    @property
    def n(self) -> int:
        """Pool size."""
        return int(self.example_id.shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns


def _fail(selector: str, message: str) -> ValueError:
    return ValueError(f"selector '{selector}': {message}")


def _check_k(k: object, n: int, selector: str) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, (bool, np.bool_)):
        raise _fail(selector, f"k must be an integer, got {k!r}")
    if k <= 0:
        raise _fail(selector, f"k must be >= 1, got k={k}")
    if k > n:
        raise _fail(selector, f"k={k} is larger than the pool ({n} examples)")
    return int(k)


def _vectors(col: pa.ChunkedArray, name: str, n: int, selector: str) -> np.ndarray:
    """A list column as a float32 [n, d] array: zero-copy for an unsliced single-chunk fixed_size_list<float32>."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    kind = arr.type
    if arr.null_count:
        raise _fail(selector, f"column {name!r} has {arr.null_count} null row(s)")
    if pa.types.is_fixed_size_list(kind):
        d = kind.list_size
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(arr)
        lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if lo != hi:
            raise _fail(selector, f"column {name!r} has vectors of different lengths ({lo} to {hi})")
        d = lo
    else:
        raise _fail(selector, f"column {name!r} must be a (fixed-size) list of floats, got type {kind}")
    if d == 0:
        raise _fail(selector, f"column {name!r} has zero-length vectors")
    values = arr.flatten()
    if values.null_count:
        raise _fail(selector, f"column {name!r} has null vector entries")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise _fail(selector, f"column {name!r} must hold floats, got {values.type}")
    out = values.to_numpy(zero_copy_only=False)
    return out.astype(np.float32, copy=False).reshape(n, d)


def _scalars(col: pa.ChunkedArray, name: str, selector: str) -> np.ndarray:
    kind = col.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise _fail(selector, f"column {name!r} must be numeric, got type {kind}")
    if col.null_count:
        raise _fail(selector, f"column {name!r} has {col.null_count} null value(s)")
    return col.to_numpy().astype(np.float64, copy=False)


def _skills(col: pa.ChunkedArray, selector: str) -> tuple[np.ndarray, np.ndarray]:
    """Skill tags as int64 codes plus the distinct names (codes index into names)."""
    if col.null_count:
        raise _fail(selector, f"column 'skill' has {col.null_count} null value(s)")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    encoded = pc.dictionary_encode(col).combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary.to_numpy(zero_copy_only=False)


def _finite(values: np.ndarray, name: str, ids: np.ndarray, selector: str) -> None:
    ok = np.isfinite(values)
    if not ok.all():
        bad_rows = ~ok if ok.ndim == 1 else ~ok.all(axis=1)
        first = ids[np.flatnonzero(bad_rows)[0]]
        raise _fail(
            selector, f"column {name!r} has NaN or inf in {int(bad_rows.sum())} row(s) (first example_id {first})"
        )


def _context_array(value: object, name: str, ndim: int, width: int | None, selector: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if name == "target_grads" and arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != ndim or arr.size == 0:
        want = "[d]" if ndim == 1 else "[rows, d] with rows >= 1"
        raise _fail(selector, f"context.{name} must have shape {want}, got {arr.shape}")
    if width is not None and arr.shape[-1] != width:
        raise _fail(selector, f"context.{name} has dimension {arr.shape[-1]} but the pool's vectors have {width}")
    if not np.isfinite(arr).all():
        raise _fail(selector, f"context.{name} has NaN or inf")
    if name != "target_embs" and (np.linalg.norm(arr.reshape(-1, arr.shape[-1]), axis=1) == 0).any():
        raise _fail(selector, f"context.{name} has a zero vector, so its cosine is undefined")
    return arr


def validate_features(
    features: pa.Table,
    k: int,
    requires: Iterable[str] = (),
    *,
    selector: str = "selector",
    context: SelectionContext | None = None,
    context_fields: Iterable[str] = (),
    optional: Iterable[str] = (),
) -> Pool:
    """Check a feature table, k and context for a selector and return the canonical Pool; raise ValueError if bad."""
    requires, optional, context_fields = set(requires), set(optional), set(context_fields)
    if isinstance(features, pa.RecordBatch):
        features = pa.Table.from_batches([features])
    if not isinstance(features, pa.Table):
        raise _fail(selector, f"features must be a pyarrow.Table, got {type(features).__name__}")
    if "example_id" not in features.column_names:
        raise _fail(selector, "the features table has no 'example_id' column")
    n = features.num_rows
    if n == 0:
        raise _fail(selector, "the features table is empty (an empty pool has nothing to select)")
    k = _check_k(k, n, selector)
    for name in sorted(requires):
        if name not in features.column_names:
            have = [c for c in features.column_names if c != "example_id"]
            raise ValueError(
                f"selector '{selector}' needs column {name!r} which the features table lacks (it has {have})"
            )
    if context is not None and not isinstance(context, SelectionContext):
        raise _fail(selector, f"context must be a SelectionContext, got {type(context).__name__}")
    for name in sorted(context_fields):
        if context is None or getattr(context, name) is None:
            raise _fail(selector, f"needs context.{name}, which is missing (pass a SelectionContext with it set)")
    ctx = context if context is not None else SelectionContext()
    if not isinstance(ctx.seed, (int, np.integer)) or isinstance(ctx.seed, (bool, np.bool_)):
        raise _fail(selector, f"context.seed must be an integer, got {ctx.seed!r}")

    id_col = features.column("example_id")
    if not pa.types.is_integer(id_col.type):
        raise _fail(selector, f"column 'example_id' must be an integer type, got {id_col.type}")
    if id_col.null_count:
        raise _fail(selector, f"column 'example_id' has {id_col.null_count} null value(s)")
    ids = id_col.to_numpy().astype(np.int64, copy=False)
    in_order = bool(np.all(ids[1:] > ids[:-1]))
    order = None if in_order else np.argsort(ids, kind="stable")
    sorted_ids = ids if order is None else ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        raise _fail(selector, f"duplicate example_id values ({dup.size} repeats, e.g. {sorted_ids[dup[0]]})")

    pool = Pool(example_id=sorted_ids)
    wanted = [c for c in FEATURE_COLUMNS if c in requires or (c in optional and c in features.column_names)]
    for name in wanted:
        col = features.column(name)
        if name == "skill":
            values, pool.skill_names = _skills(col, selector)
        elif name in VECTOR_COLUMNS:
            values = _vectors(col, name, n, selector)
            _finite(values, name, ids, selector)
        else:
            values = _scalars(col, name, selector)
            _finite(values, name, ids, selector)
        pool.columns[name] = values if order is None else values[order]

    checked = {}
    widths = {"target_grads": "grad", "proxy_grad": "grad", "target_embs": "emb"}
    for name in CONTEXT_FIELDS:
        value = getattr(ctx, name)
        if value is None or name not in context_fields:
            continue
        vec = pool.columns.get(widths[name])
        width = None if vec is None else vec.shape[1]
        checked[name] = _context_array(value, name, 1 if name == "proxy_grad" else 2, width, selector)
    pool.context = replace(ctx, **checked)
    return pool
