"""GreeDi partition-and-merge greedy (Mirzasoleiman et al. 2013, "Distributed Submodular Maximization") on Ray.

The pool is split at random (seeded) into m partitions; each partition runs the single-machine greedy for k as a Ray
task (its own kNN graph, FL scaled to its own size); the m*k picks are merged, each weighted by how many partition
points it covers best, and one more greedy picks k of them. The result is the best, under the merge objective, of the
merged set and the m local sets. Cost: per task O((N/m) kNN search + lazy greedy), in parallel; merge O(m k kNN
search + greedy) on one node. Memory per task O((N/m)(d + knn)); the driver never builds an N-point graph.
Ray starts a local instance if none is running (Ray's default on the first task).
"""

from __future__ import annotations

import numpy as np
import ray

from lhas_ray.selection.submodular import build_objective, coverage_weights, maximize


def _greedy_part(
    n: int,
    emb: np.ndarray | None,
    modular: np.ndarray | None,
    clusters: np.ndarray | None,
    opts: dict,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Greedy on one partition: (picked local positions, their coverage weights, or None without an FL term)."""
    obj = build_objective(
        opts["k"],
        n,
        emb=emb,
        modular=modular,
        clusters=clusters,
        l_c=opts["l_c"],
        l_a=opts["l_a"],
        knn=opts["knn"],
        exact_limit=opts["exact_limit"],
        seed=opts["seed"],
        fl_unit=opts["fl_unit"],
        conc_unit=opts["conc_unit"],
    )
    picked = maximize(obj, opts["k"], opts["method"], epsilon=opts["epsilon"], seed=opts["seed"])
    return picked, (coverage_weights(obj, emb) if obj.graph is not None else None)


_greedy_task = ray.remote(num_cpus=1)(_greedy_part)


def greedi(
    k: int,
    n: int,
    *,
    partitions: int,
    emb: np.ndarray | None = None,
    modular: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    l_c: float = 0.0,
    l_a: float = 0.0,
    knn: int = 32,
    exact_limit: int = 50_000,
    method: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    fl_unit: float | None = None,
    conc_unit: float | None = None,
) -> np.ndarray:
    """Select k of n positions with GreeDi over ``partitions`` Ray tasks; same objective as ``build_objective``.

    Without ``fl_unit`` each partition scales FL by its own size (N_part / k) and the merge by N / k."""
    opts = dict(k=k, l_c=l_c, l_a=l_a, knn=knn, exact_limit=exact_limit, method=method, epsilon=epsilon, seed=seed)
    opts.update(fl_unit=fl_unit, conc_unit=conc_unit)
    perm = np.random.default_rng(seed).permutation(n)
    parts = [np.sort(p) for p in np.array_split(perm, partitions) if p.size]

    def take(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
        return None if a is None else a[idx]

    refs = [_greedy_task.remote(p.size, take(emb, p), take(modular, p), take(clusters, p), opts) for p in parts]
    results = ray.get(refs)
    local = [p[picked] for p, (picked, _) in zip(parts, results, strict=True)]
    union = np.concatenate(local)
    has_fl = results[0][1] is not None
    weights = np.concatenate([w for _, w in results]) if has_fl else None

    merged_obj = build_objective(
        k,
        union.size,
        emb=take(emb, union),
        modular=take(modular, union),
        clusters=take(clusters, union),
        l_c=l_c,
        l_a=l_a,
        knn=knn,
        exact_limit=exact_limit,
        demand_weights=weights,
        seed=seed,
        fl_unit=fl_unit,
        conc_unit=conc_unit,
    )
    merged = maximize(merged_obj, k, method, epsilon=epsilon, seed=seed)
    best, best_value = union[merged], merged_obj.value()
    offset = 0
    for sol in local:
        if sol.size == k:
            merged_obj.reset()
            for i in range(offset, offset + k):
                merged_obj.add(i)
            if merged_obj.value() > best_value:
                best, best_value = sol, merged_obj.value()
        offset += sol.size
    return best


def run_greedy(
    p: dict,
    k: int,
    n: int,
    *,
    seed: int,
    emb: np.ndarray | None = None,
    modular: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    l_c: float = 0.0,
    l_a: float = 0.0,
    fl_unit: float | None = None,
    conc_unit: float | None = None,
    graph=None,
) -> np.ndarray:
    """Maximise the shared objective with the optimiser parameters in p: one machine, or GreeDi when partitions > 1.

    ``fl_unit``/``conc_unit`` replace the default term units (``build_objective``); ``graph`` reuses a similarity
    graph already built on emb (one machine only)."""
    common = dict(emb=emb, modular=modular, clusters=clusters, l_c=l_c, l_a=l_a, knn=p["knn"], seed=seed)
    common.update(fl_unit=fl_unit, conc_unit=conc_unit)
    if p["partitions"] > 1:
        return greedi(
            k,
            n,
            partitions=p["partitions"],
            exact_limit=p["knn_exact_limit"],
            method=p["greedy"],
            epsilon=p["epsilon"],
            **common,
        )
    obj = build_objective(k, n, exact_limit=p["knn_exact_limit"], graph=graph, **common)
    return maximize(obj, k, p["greedy"], epsilon=p["epsilon"], seed=seed)
