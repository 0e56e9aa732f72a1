"""How a pool reaches the Train workers: every row once, and no coordinator process for a pool already in memory."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from lhas_ray.launch import pool_dataset
from lhas_ray.scoring.whole_pool import WholePoolDataConfig


def _pool(n: int) -> pa.Table:
    return pa.table({"example_id": np.arange(n, dtype=np.int64), "prompt": [f"p{i}" for i in range(n)]})


def _split_coordinators() -> int:
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this session's instance, not another on the machine
    return len(list_actors(address=address, filters=[("class_name", "=", "SplitCoordinator")], limit=1000))


def _read(shard) -> list[int]:
    return [int(i) for b in shard.iter_batches(batch_size=64, batch_format="numpy") for i in b["example_id"]]


def test_a_pool_in_the_object_store_is_split_by_blocks_without_a_coordinator_and_every_row_once(ray_session):
    before = _split_coordinators()
    shards = WholePoolDataConfig().configure({"pool": pool_dataset(_pool(1001), 2)}, 2, None, [None, None])
    assert _split_coordinators() == before  # no process of its own (streaming_split starts one per pool and run)
    ids = [_read(per_rank["pool"]) for per_rank in shards]
    assert sorted(ids[0] + ids[1]) == list(range(1001))  # no row dropped (equal=True would drop one), none twice
    assert ids[0] and ids[1]  # both workers score a share
    assert _read(shards[0]["pool"]) == ids[0]  # a shard reads again the same (a restarted worker group rescores it)


def test_a_lazily_read_pool_streams_to_every_worker_and_every_row_once(ray_session):
    lazy = pool_dataset(_pool(777), 2).map_batches(lambda b: b, batch_format="pyarrow")
    before = _split_coordinators()
    shards = WholePoolDataConfig().configure({"pool": lazy}, 2, None, [None, None])
    ids: list[list[int]] = [[], []]

    def consume(rank: int) -> None:  # streaming_split's shards are read side by side, as the workers do
        ids[rank] = _read(shards[rank]["pool"])

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(ids[0] + ids[1]) == list(range(777))
    assert _split_coordinators() == before + 1


def test_the_selected_rows_of_an_in_memory_pool_come_back_in_pool_order(ray_session):
    """What an actor-pool run keeps of an in-memory pool: the rows of the selected ids, read block by block. A pool
    of 3,000 rows is 3 blocks of 1,000 (1,024 rows at most); ids from every block, one repeated, one not in the pool."""
    from lhas_ray.scoring.actor_pool import rows_with_ids

    pool = pool_dataset(_pool(3000), 1)
    assert pool.num_blocks() == 3
    rows = rows_with_ids(pool, np.array([2500, 7, 1999, 7, 4000, 1000]))
    assert rows.column("example_id").to_pylist() == [7, 1000, 1999, 2500]  # pool order, each row once
    assert rows.column("prompt").to_pylist() == ["p7", "p1000", "p1999", "p2500"]
