"""Rows/s of the Ray Data scorer against a plain single-process torch loop, same model and pool, same script.

    .venv/bin/python benchmarks/bench_scoring.py                 # 2k and 50k rows, loss + embedding
    .venv/bin/python benchmarks/bench_scoring.py --sizes 200000  # also reports the driver's peak memory

The pool is written to parquet first and read as the product reads a streamed pool (``hf.pool.stream``): the
driver's scan (``scan_pool``), then ``streamed_dataset`` into ``score_with_actor_pool``, so it streams through the
actors and the driver never holds it. The baseline reads the same files through the same example conversion
(``iter_pool``) and scores them in one process with every core. Ray's time includes the scan and the actor pool's
start-up (the fixed costs a real run pays once per scoring call).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import pyarrow.parquet as pq
import ray
import torch

from lhas_ray.config import ModelConfig
from lhas_ray.config.sources import HFSourceConfig
from lhas_ray.model import build_model, save_pretrained
from lhas_ray.scoring.actor_pool import score_with_actor_pool
from lhas_ray.scoring.score import Scorer
from lhas_ray.tasks import builtin, streamed
from lhas_ray.tasks.schema import row_slices

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import reverse_pool_spec  # noqa: E402


def write_pool(n: int, folder: str, rows_per_file: int = 10_000) -> list[str]:
    """A built-in pool of n rows as parquet files (generated and written in chunks, never whole in memory)."""
    paths = []
    for i, start in enumerate(range(0, n, rows_per_file)):
        size = min(rows_per_file, n - start)
        spec = reverse_pool_spec(size, stage=1 + i)
        path = os.path.join(folder, f"part-{i:05d}.parquet")
        pq.write_table(builtin.pool(spec, 0, 2, 6), path)
        paths.append(path)
    return paths


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000, 50_000])
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--features", nargs="+", default=["loss", "emb"])
    ap.add_argument("--skip-baseline", action="store_true", help="only the Ray path (for the memory check)")
    args = ap.parse_args()

    cfg = ModelConfig(max_length=32)
    model, tok = build_model(cfg, 0)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    times: dict[int, tuple[float, float | None]] = {}  # rows -> (ray seconds, plain seconds)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tok, os.path.join(tmp, "ckpt"))  # the store is tmp, the checkpoint "ckpt" in it
        for n in args.sizes:
            folder = os.path.join(tmp, f"pool{n}")
            os.makedirs(folder)
            write_pool(n, folder)
            rss_before = peak_rss_gib()

            spec = HFSourceConfig(
                path="parquet",
                data_files=os.path.join(folder, "*.parquet"),
                columns={"prompt": "prompt", "answer": "answer", "skill": "skill"},
                stream=True,
            )

            start = time.perf_counter()
            pool = streamed.scan_pool(spec, stage=1, start_id=0, heldout=[])
            got = score_with_actor_pool(
                streamed.streamed_dataset(pool),
                tmp,
                "ckpt",
                cfg,
                set(args.features),
                max_length=cfg.max_length,
                batch_size=args.batch_size,
                actors=args.actors,
            )
            ray_s = time.perf_counter() - start
            assert got.num_rows == n, (got.num_rows, n)
            del got
            line = f"n={n:>7}  ray data ({args.actors} actors): {n / ray_s:8.0f} rows/s ({ray_s:6.1f}s)"
            times[n] = (ray_s, None)

            if not args.skip_baseline:
                torch.set_num_threads(os.cpu_count())
                scorer = Scorer(model.eval(), tok, set(args.features), max_length=cfg.max_length)
                start = time.perf_counter()
                cut = (b for table in streamed.iter_pool(pool) for b in row_slices(table, args.batch_size))
                base = scorer.score_batches(cut)
                base_s = time.perf_counter() - start
                assert base.num_rows == n
                times[n] = (ray_s, base_s)
                line += f"  plain torch loop: {n / base_s:8.0f} rows/s ({base_s:6.1f}s)  ratio ray/plain = {base_s / ray_s:.2f}"
            print(line, flush=True)
            print(f"          driver peak RSS: {peak_rss_gib():.2f} GiB (before this size: {rss_before:.2f} GiB)")
    ray.shutdown()
    print_marginal(times)


def print_marginal(times: dict[int, tuple[float, float | None]]) -> None:
    """Rows/s between the smallest and largest size: the rate once running, with each side's fixed costs cancelled,
    and the fixed cost of the Ray side that this rate implies (its time at the smallest size, less that size's work)."""
    if len(times) < 2:
        return
    small, large = min(times), max(times)
    rows = large - small
    if times[large][0] <= times[small][0] or (times[large][1] is not None and times[large][1] <= times[small][1]):
        print(f"between n={small} and n={large}: not measurable, the larger size took no longer (sizes too close)")
        return
    ray_rate = rows / (times[large][0] - times[small][0])
    line = f"between n={small} and n={large}: ray data {ray_rate:8.0f} rows/s"
    if times[large][1] is not None:
        plain_rate = rows / (times[large][1] - times[small][1])
        line += f", plain torch loop {plain_rate:8.0f} rows/s, ratio ray/plain = {ray_rate / plain_rate:.2f}"
    print(line)
    print(f"ray data's fixed cost (start-up of the actors and the read): {times[small][0] - small / ray_rate:.1f}s")


if __name__ == "__main__":
    main()
