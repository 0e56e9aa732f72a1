"""Scoring inside the Train worker group: each worker scores its Ray Data shard of the pool, then all gather.

This is the default path: the workers already hold the current model, so scoring costs no extra start-up. How the
pool is split into those shards is ``scoring.whole_pool.WholePoolDataConfig``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lhas_ray.scoring.score import Scorer, features_table
from lhas_ray.tasks.schema import row_slices, rows_with_ids
from lhas_ray.training.dist import all_gather_objects, rank, world_size

ROW_COLUMNS = ["example_id", "skill", "prompt", "answer", "tags"]


def score_shard(scorer: Scorer, shard, batch_size: int, keep: tuple[str, ...] = ()) -> tuple[pa.Table, pa.Table]:
    """Score this worker's shard: (features of the whole pool on every rank, sorted by example_id, with the pool
    columns ``keep`` beside them; this rank's own rows, kept for ``gather_rows``). Only features travel between
    ranks, so a rank holds its share of the pool's text, never the whole pool's."""
    feats, rows = [], []
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        feats.append(scorer.score(batch))
        rows.append(batch.select(ROW_COLUMNS))
    mine = pa.concat_tables(rows, promote_options="default") if rows else None
    gathered = all_gather_objects((feats, mine.select(["example_id", *keep]) if mine is not None else None))
    features = features_table([f for part, _ in gathered for f in part])
    if keep:
        kept = pa.concat_tables([t for _, t in gathered if t is not None]).sort_by("example_id")
        for name in keep:
            features = features.append_column(name, kept.column(name))
    return features, mine if mine is not None else pa.table({c: [] for c in ROW_COLUMNS})


def gather_rows(mine: pa.Table, ids: np.ndarray) -> pa.Table:
    """The pool rows of ``ids`` in the order of ``ids``, on every rank, each rank giving those of its own share."""
    ids = np.asarray(ids, dtype=np.int64)
    have = rows_with_ids([mine], ids) if mine.num_rows else None
    parts = [t for t in all_gather_objects(have) if t is not None and t.num_rows]
    return in_order(pa.concat_tables(parts, promote_options="default") if parts else mine.slice(0, 0), ids)


def in_order(rows: pa.Table, ids: np.ndarray) -> pa.Table:
    """``rows`` (holding every id of ``ids``) in the order of ``ids``."""
    position = pc.index_in(pa.array(np.asarray(ids, dtype=np.int64)), value_set=rows.column("example_id"))
    if position.null_count:
        raise RuntimeError(f"{position.null_count} selected ids are not in the pool")
    return rows.take(position)


def score_spread(scorer: Scorer, table: pa.Table, batch_size: int) -> pa.Table:
    """Features of every row of an in-memory ``table`` (context sets: LESS targets, the LHAS proxy) on every rank,
    each rank scoring a contiguous share; the scoring model is whole on every rank, so shares need not match."""
    share = np.array_split(np.arange(table.num_rows), world_size())[rank()]
    mine = table.slice(int(share[0]), len(share)) if len(share) else table.slice(0, 0)
    parts = all_gather_objects([scorer.score(b) for b in row_slices(mine, batch_size)])
    return features_table([cols for rank_parts in parts for cols in rank_parts])
