"""Selection benchmarks, each a ratio or budget measured in this run (sizes are flags; defaults are the issue's).

1. facility location, lazy greedy vs the naive-greedy reference on the same sparse kNN graph: speed ratio, same set?
2. LHAS on a large pool (all four terms, skill clusters, 32-NN graph): wall time and peak RSS against the budget.
3. GreeDi (Ray tasks) vs single-machine greedy for facility location: ratio of the objectives.
4. LHAS vs facility location on the demo's stage-1 pool (scored by the demo model): ratio of selection times.

Each section runs in its own process so its peak RSS (``resource.getrusage``) is its own. Embeddings are a seeded
Gaussian mixture on the unit sphere (clustered, as real embeddings are), so kNN graphs and coverage mean something.

    python benchmarks/bench_selection.py                       # all three at the issue's sizes
    python benchmarks/bench_selection.py --only fl --fl-n 5000 --fl-k 500   # one small section
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa

from lhas_ray.selection import SelectionContext, facility_location_value, get_selector
from lhas_ray.selection.knn import normalize_rows
from lhas_ray.selection.objective import Objective, build_objective
from lhas_ray.selection.optimisers import lazy_greedy, naive_greedy


def mixture(n: int, d: int, seed: int, per_center: int = 1000, noise: float = 0.6) -> np.ndarray:
    """n unit vectors around n / per_center random centres (float32)."""
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.standard_normal((max(2, n // per_center), d), dtype=np.float32))
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(noise / np.sqrt(d))
    x += centres[rng.integers(0, centres.shape[0], n)]
    return normalize_rows(x)


def vectors(a: np.ndarray) -> pa.FixedSizeListArray:
    """A [n, d] float32 array as a fixed_size_list column without copying."""
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_fl(args: argparse.Namespace) -> None:
    """Lazy vs naive greedy for facility location on one shared kNN graph."""
    emb = mixture(args.fl_n, args.d, seed=0)
    t0 = time.perf_counter()
    lazy_obj = build_objective(args.fl_k, args.fl_n, emb=emb, l_c=1.0, knn=args.knn)
    t_graph = time.perf_counter() - t0
    naive_obj = Objective(args.fl_n, graph=lazy_obj.graph, fl_coef=lazy_obj.fl_coef)  # same objective, same graph
    t0 = time.perf_counter()
    lazy = lazy_greedy(lazy_obj, args.fl_k)
    t_lazy = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = naive_greedy(naive_obj, args.fl_k)
    t_naive = time.perf_counter() - t0
    print(
        f"[fl] N={args.fl_n} d={args.d} k={args.fl_k} knn={args.knn}: graph {t_graph:.1f}s (nnz {lazy_obj.graph.nnz})"
    )
    print(f"[fl] lazy greedy {t_lazy:.2f}s, naive greedy {t_naive:.2f}s, speed ratio {t_naive / t_lazy:.1f}x")
    same_set, same_order = set(lazy.tolist()) == set(naive.tolist()), np.array_equal(lazy, naive)
    print(f"[fl] identical sets: {same_set}, identical order: {same_order}")
    print(f"[fl] FL(S) = {lazy_obj.fl_value():.1f} (graph), mean coverage {lazy_obj.fl_value() / args.fl_n:.4f}")
    print(f"[fl] peak RSS {peak_rss_gib():.2f} GiB")


def bench_lhas(args: argparse.Namespace) -> None:
    """LHAS with all four terms through the public API on a large pool: wall time and peak memory."""
    n, d, k = args.lhas_n, args.d, args.lhas_k
    rng = np.random.default_rng(1)
    emb = mixture(n, d, seed=1)
    grad = mixture(n, d, seed=2, per_center=5000, noise=2.0)
    skills = np.array([f"skill{i:02d}" for i in range(20)])
    table = pa.table(
        {
            "example_id": pa.array(rng.permutation(n).astype(np.int64)),
            "loss": pa.array(rng.gamma(2.0, size=n).astype(np.float32)),
            "quality": pa.array(-rng.gamma(2.0, size=n).astype(np.float32)),
            "grad": vectors(grad),
            "emb": vectors(emb),
            "skill": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 20, n).astype(np.int32)), skills),
        }
    )
    del emb, grad
    ctx = SelectionContext(proxy_grad=rng.standard_normal(d).astype(np.float32), seed=0)
    sel = get_selector("lhas", l_u=1.0, l_c=1.0, l_f=0.5, l_a=1.0, utility="quality", knn=args.knn)
    setup_rss = peak_rss_gib()
    t0 = time.perf_counter()
    out = sel.select(table, k, ctx)
    wall = time.perf_counter() - t0
    rss = peak_rss_gib()
    picked = pa.table({"example_id": out}).join(table.select(["example_id", "skill"]), "example_id")
    shares = np.bincount(picked.column("skill").combine_chunks().indices.to_numpy(), minlength=20) / k
    print(f"[lhas] N={n} d={d} k={k} knn={args.knn} (requires {sorted(sel.requires)}): select {wall:.1f}s")
    print(f"[lhas] peak RSS {rss:.2f} GiB (of which {setup_rss:.2f} GiB before select: the feature table)")
    print(f"[lhas] skill shares of the selection: min {shares.min():.3f} max {shares.max():.3f}")
    ok = wall < args.lhas_time_budget and rss < args.lhas_mem_budget
    print(
        f"[lhas] target (< {args.lhas_time_budget:.0f}s, < {args.lhas_mem_budget:.0f} GiB): {'met' if ok else 'MISSED'}"
    )


def bench_greedi(args: argparse.Namespace) -> None:
    """GreeDi over Ray tasks vs single-machine lazy greedy for facility location."""
    import ray

    n, k = args.greedi_n, args.greedi_k
    emb = mixture(n, args.d, seed=3)
    table = pa.table({"example_id": pa.array(np.arange(n, dtype=np.int64)), "emb": vectors(emb)})
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    single = get_selector("facility_location", knn=args.knn).select(table, k)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = get_selector("facility_location", knn=args.knn, partitions=args.partitions).select(table, k)
    t_dist = time.perf_counter() - t0
    ray.shutdown()
    exact_single, exact_dist = facility_location_value(table, single), facility_location_value(table, dist)
    graph_single = facility_location_value(table, single, knn=args.knn)
    graph_dist = facility_location_value(table, dist, knn=args.knn)
    print(f"[greedi] N={n} d={args.d} k={k} knn={args.knn} partitions={args.partitions} on {args.cpus} Ray CPUs")
    print(f"[greedi] single-machine greedy {t_single:.1f}s, GreeDi {t_dist:.1f}s")
    print(
        f"[greedi] exact FL: single {exact_single:.1f}, GreeDi {exact_dist:.1f}, ratio {exact_dist / exact_single:.4f}"
    )
    print(f"[greedi] kNN-graph FL (the optimised objective): ratio {graph_dist / graph_single:.4f}")
    print(f"[greedi] target ratio >= 0.9: {'met' if exact_dist / exact_single >= 0.9 else 'MISSED'}")


def bench_demo(args: argparse.Namespace) -> None:
    """LHAS against facility location on the demo's stage-1 pool, scored by the demo model as the protocol does:
    selection time of each (median of ``--repeats``) and their ratio (target: lhas <= 2x facility_location)."""
    from lhas_ray.config import load_config
    from lhas_ray.model import build_model
    from lhas_ray.scoring.score import Scorer
    from lhas_ray.tasks.suite import build_suite

    cfg = load_config("demo")
    lhas_cfg = cfg.selector("lhas")
    suite = build_suite(cfg, cfg.seeds[0])
    stage = suite.stages[0]
    model, tok = build_model(cfg.model, seed=cfg.seeds[0])
    selectors = {
        "facility_location": get_selector("facility_location"),
        "lhas": get_selector("lhas", **lhas_cfg.params),
    }
    want = set().union(*(set(s.requires) | set(getattr(s, "optional", ())) for s in selectors.values())) - {"skill"}
    scorer = Scorer(
        model.eval(), tok, want, max_length=cfg.model.max_length, grad_dim=cfg.scoring.grad_dim, reference=model
    )
    pool = stage.pool.sort_by("example_id")
    feats = scorer.score_batches(pool.slice(i, cfg.scoring.batch_size) for i in range(0, pool.num_rows, 256))
    table = feats.append_column("skill", pool.column("skill"))
    proxy = Scorer(model, tok, {"grad"}, max_length=cfg.model.max_length, grad_dim=cfg.scoring.grad_dim)
    proxy_grad = np.stack(proxy.score_batches([suite.future_proxy("replay", 1)])["grad"].to_numpy(False)).mean(0)
    ctx = SelectionContext(proxy_grad=proxy_grad.astype(np.float32), seed=0)
    walls = {}
    for name, sel in selectors.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sel.select(table, stage.budget, ctx)
            times.append(time.perf_counter() - t0)
        walls[name] = float(np.median(times))
        print(f"[demo] {name}: select {walls[name] * 1000:.0f} ms (median of {args.repeats})")
    ratio = walls["lhas"] / walls["facility_location"]
    print(f"[demo] pool N={table.num_rows} k={stage.budget} (demo stage 1); lhas params {lhas_cfg.params}")
    print(f"[demo] ratio lhas / facility_location = {ratio:.2f} (target <= 2: {'met' if ratio <= 2 else 'MISSED'})")


SECTIONS = {"fl": bench_fl, "lhas": bench_lhas, "greedi": bench_greedi, "demo": bench_demo}


def main() -> None:
    """Parse sizes, then run each requested section in its own process (so each peak RSS is its own)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=[*SECTIONS, "all"], default="all")
    p.add_argument("--d", type=int, default=64, help="embedding / gradient dimension")
    p.add_argument("--knn", type=int, default=32, help="neighbours per point in the similarity graph")
    p.add_argument("--fl-n", type=int, default=50_000)
    p.add_argument("--fl-k", type=int, default=5_000)
    p.add_argument("--lhas-n", type=int, default=1_000_000)
    p.add_argument("--lhas-k", type=int, default=100_000)
    p.add_argument("--lhas-time-budget", type=float, default=300.0, help="seconds")
    p.add_argument("--lhas-mem-budget", type=float, default=6.0, help="GiB")
    p.add_argument("--greedi-n", type=int, default=200_000)
    p.add_argument("--greedi-k", type=int, default=5_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs for the GreeDi section")
    p.add_argument("--repeats", type=int, default=5, help="timed selections per selector in the demo section")
    args = p.parse_args()
    if args.only != "all":
        SECTIONS[args.only](args)
        return
    for name in SECTIONS:
        argv = [a for a in sys.argv[1:] if not a.startswith("--only")]
        subprocess.run([sys.executable, __file__, "--only", name, *argv], check=True)


if __name__ == "__main__":
    main()
