"""Rows/s of the Ray Data scorer against a plain single-process torch loop, same model and pool, same script.

    .venv/bin/python benchmarks/bench_scoring.py                 # 2k and 50k rows, loss + embedding
    .venv/bin/python benchmarks/bench_scoring.py --sizes 200000  # also reports the driver's peak memory

The pool is written to parquet first and read by Ray Data, so it streams through the actors and the driver never
holds it; the baseline reads the same parquet and scores it in one process with every core. Ray's time includes
the actor pool's start-up (the fixed cost a real run pays once per scoring call).
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
from lhas_ray.model import build_model, save_pretrained
from lhas_ray.scoring.actor_pool import score_with_actor_pool
from lhas_ray.scoring.score import Scorer
from lhas_ray.tasks import builtin

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
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tok, os.path.join(tmp, "ckpt"))  # the store is tmp, the checkpoint "ckpt" in it
        for n in args.sizes:
            folder = os.path.join(tmp, f"pool{n}")
            os.makedirs(folder)
            files = write_pool(n, folder)
            rss_before = peak_rss_gib()

            start = time.perf_counter()
            # reading is light I/O: a quarter CPU per read task, so reads never wait behind actors that hold every core
            ds = ray.data.read_parquet(folder, ray_remote_args={"num_cpus": 0.25})
            got = score_with_actor_pool(
                ds,
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

            if not args.skip_baseline:
                torch.set_num_threads(os.cpu_count())
                scorer = Scorer(model.eval(), tok, set(args.features), max_length=cfg.max_length)
                start = time.perf_counter()
                batches = (b for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=args.batch_size))
                import pyarrow as pa

                base = scorer.score_batches(pa.Table.from_batches([b]) for b in batches)
                base_s = time.perf_counter() - start
                assert base.num_rows == n
                line += f"  plain torch loop: {n / base_s:8.0f} rows/s ({base_s:6.1f}s)  ratio ray/plain = {base_s / ray_s:.2f}"
            print(line, flush=True)
            print(f"          driver peak RSS: {peak_rss_gib():.2f} GiB (before this size: {rss_before:.2f} GiB)")
    ray.shutdown()


if __name__ == "__main__":
    main()
