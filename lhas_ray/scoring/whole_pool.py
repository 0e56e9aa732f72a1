"""How Ray Train splits a pool into the workers' shards: whole, never dropping rows.

Ray Train's default split (``streaming_split(equal=True)``) drops rows to equalise shards; a pool must be scored
whole. A pool already in the object store (``from_arrow``) is split by its blocks; only a lazily read pool streams,
because every ``streaming_split`` starts a coordinator actor (one more process per pool and run). This module
imports no torch: the driver and Ray Train's controller load it to build and run the trainer.
"""

from __future__ import annotations

from ray.data.dataset import MaterializedDataset
from ray.train import DataConfig


class WholePoolDataConfig(DataConfig):
    """Split every dataset across workers without dropping rows (shards may differ by a block).

    A materialized dataset is split by block references (no actor; a shard can be read again after a worker group
    restart); a lazy one (``read_parquet``) streams through ``streaming_split`` and its coordinator actor.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            if ds.name is None:
                ds.set_name(name)
            if isinstance(ds, MaterializedDataset):
                shards = [part.iterator() for part in ds.split(world_size, equal=False)]
            else:
                ds.context.execution_options = self._resolve_execution_options(name)
                shards = ds.streaming_split(world_size, equal=False, locality_hints=hints)
            for i, shard in enumerate(shards):
                output[i][name] = shard
        return output
