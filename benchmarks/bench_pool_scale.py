"""The driver's peak memory on a pool of a million rows: a streamed pool against loading the same files in memory.

Writes ``--rows`` built-in examples as ``--files`` parquet files (in chunks, never whole), then:
- baseline, in a child process: a driver's imports, then its load of the same files as an in-memory pool
  (``load_hf_examples``, what ``stream: false`` does before any Ray work), and that child's peak RSS (a lower bound
  of what the in-memory run's driver would need);
- the micro protocol in this process with ``hf.pool.stream: true`` and ``scoring.mode: actor_pool``: one stage,
  the tiny model, 1 Train worker, ``loss_high`` scoring every row, a budget of 256, 10 steps; this process's peak
  RSS (``ru_maxrss``, the driver only: Ray's workers and actors are other processes).

Prints both peaks, their ratio and the run's wall time. Target (issue 14): the streamed run's driver under 2 GiB.

    .venv/bin/python benchmarks/bench_pool_scale.py                      # 1,000,000 rows
    .venv/bin/python benchmarks/bench_pool_scale.py --rows 20000         # a quick check
    .venv/bin/python benchmarks/bench_pool_scale.py --prompt-chars 400 --baseline-only   # longer rows, load only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq


def write_pool(rows: int, files: int, folder: str, prompt_chars: int = 0) -> str:
    """Reverse-the-word examples (prompt, answer, skill) as ``files`` parquet files; returns their glob."""
    import numpy as np

    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    per = -(-rows // files)
    rng = np.random.default_rng(0)
    filler = ("context " * (prompt_chars // 8 + 1))[:prompt_chars]  # a longer prompt, as real instructions have
    for f in range(files):
        n, first = min(per, rows - f * per), f * per
        words = ["".join(w) for w in letters[rng.integers(0, 26, size=(n, 6))]]
        table = pa.table(
            {
                "q": [f"{filler}rv:{w}{i}=" for i, w in enumerate(words, start=first)],
                "a": [w[::-1] for w in words],
                "kind": ["reverse" if i % 2 else "copy" for i in range(n)],
            }
        )
        pq.write_table(table, os.path.join(folder, f"pool-{f:03d}.parquet"), row_group_size=100_000)
    return os.path.join(folder, "pool-*.parquet")


def write_heldout(folder: str) -> str:
    path = os.path.join(folder, "heldout.jsonl")
    with open(path, "w") as fh:
        for i in range(80):
            w = f"held{i:03d}"
            fh.write(json.dumps({"q": f"rv:{w}=", "a": w[::-1], "kind": "reverse"}) + "\n")
    return path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def in_memory_child(pool_glob: str) -> None:
    """The baseline: the pool loaded whole, as ``stream: false`` loads it in the driver."""
    import lhas_ray.launch  # noqa: F401  (what a driver imports before it loads data: ray, torch, transformers)
    from lhas_ray.tasks.hf import load_hf_examples

    floor = peak_rss_gib()
    spec = {"path": "parquet", "data_files": pool_glob, "columns": {"prompt": "q", "answer": "a", "skill": "kind"}}
    spec["cache_dir"] = os.path.join(os.path.dirname(pool_glob), "hf-cache")  # datasets' Arrow cache, removed after
    pool = load_hf_examples(spec, stage=1, split="pool", start_id=0)
    print(json.dumps({"rows": pool.num_rows, "floor_gib": floor, "peak_gib": peak_rss_gib()}))


def config(pool_glob: str, heldout: str) -> dict:
    spec = {"columns": {"prompt": "q", "answer": "a", "skill": "kind"}}
    stage = {
        "name": "big",
        "source": "hf",
        "targets": ["reverse"],
        "budget": 256,
        "eval_size": 40,
        "probe_size": 40,
        "ood": [],
        "hf": {
            "pool": {"path": "parquet", "data_files": pool_glob, "stream": True, **spec},
            "eval": {"path": "json", "data_files": heldout, **spec},
        },
    }
    return {
        "name": "pool-scale",
        "model": {"name": "tiny-gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 24},
        "stages": [stage],
        "selectors": [{"name": "loss_high"}],
        "training": {"steps": 10, "batch_size": 16, "num_workers": 1, "eval_every": 10, "warmup": {"steps": 0}},
        "scoring": {"mode": "actor_pool", "batch_size": 1024},
        "evaluation": {"general_size": 0},
        "ray": {"num_cpus": os.cpu_count() + 1},  # a CPU beyond the training worker's for every core's actor
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--prompt-chars", type=int, default=0, help="extra characters before every prompt")
    ap.add_argument("--baseline-only", action="store_true", help="only the in-memory load (no protocol run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pool_glob, heldout = write_pool(args.rows, args.files, tmp, args.prompt_chars), write_heldout(tmp)
        print(f"wrote {args.rows:,} rows as {args.files} parquet files in {time.perf_counter() - start:.0f} s")

        child = subprocess.run(
            [sys.executable, __file__, "--child", pool_glob], capture_output=True, text=True, check=True
        )
        base = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"in memory (stream: false; the driver's imports, then the load alone): {base['rows']:,} rows, "
            f"peak {base['peak_gib']:.2f} GiB ({base['floor_gib']:.2f} GiB after the imports)"
        )

        if args.baseline_only:
            return
        from lhas_ray.config import config_from_dict
        from lhas_ray.launch import run_experiment
        from lhas_ray.store import ResultStore

        cfg = config_from_dict(config(pool_glob, heldout))
        start = time.perf_counter()
        out = os.path.join(tmp, "out")
        run_experiment(cfg, out, live=False)
        wall = time.perf_counter() - start
        peak = peak_rss_gib()
        timings = ResultStore(out).read_table("timings").to_pandas().groupby("phase").seconds.sum()
        feats = pq.read_metadata(os.path.join(out, "features/loss_high/s0/stage1.parquet")).num_rows
        print(
            f"streamed + actor_pool (the whole run): {feats:,} rows scored, driver peak {peak:.2f} GiB, wall {wall:.0f} s"
        )
        print("  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        print(f"ratio streamed/in-memory driver peak: {peak / base['peak_gib']:.2f} (target: streamed under 2 GiB)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        in_memory_child(sys.argv[2])
    else:
        main()
