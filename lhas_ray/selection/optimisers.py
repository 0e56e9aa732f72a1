"""The optimisers of J (``objective.py``): naive greedy (the reference), lazy greedy (exact, the default), stochastic
greedy, and GreeDi on Ray for pools split into partitions; ``run_greedy`` picks one from a selector's parameters.

Cost: building the graph is the kNN search (see ``knn``); naive greedy O(k * nnz) with nnz ~ N * (knn + 1); lazy
greedy O(nnz) for the first pass plus O(deg + log N) per re-evaluation, typically a few per pick; stochastic greedy
(Mirzasoleiman et al. 2015, "Lazier than lazy greedy") O(k * (N/k) log(1/eps) * deg) = O(N log(1/eps) * deg).

GreeDi: partition-and-merge greedy (Mirzasoleiman et al. 2013, "Distributed Submodular Maximization") on Ray.

The pool is split at random (seeded) into m partitions; each partition runs the single-machine greedy for k as a Ray
task (its own kNN graph, FL scaled to its own size); the m*k picks are merged, each weighted by how many partition
points it covers best, and one more greedy picks k of them. The result is the best, under the merge objective, of the
merged set and the m local sets. Cost: per task O((N/m) kNN search + lazy greedy), in parallel; merge O(m k kNN
search + greedy) on one node. Memory per task O((N/m)(d + knn)); the driver never builds an N-point graph.
Ray starts a local instance if none is running (Ray's default on the first task).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import ray

from lhas_ray.selection.objective import Objective, ObjectiveSpec, build_objective, coverage_weights


def naive_greedy(obj: Objective, k: int) -> np.ndarray:
    """Reference greedy: every step recomputes every gain and takes the best (smallest position on ties). O(k nnz)."""
    taken = np.zeros(obj.n, dtype=bool)
    out = np.empty(k, dtype=np.int64)
    all_pos = np.arange(obj.n)
    for t in range(k):
        g = obj.gains(all_pos)
        g[taken] = -np.inf
        i = int(np.argmax(g))
        taken[i] = True
        obj.add(i)
        out[t] = i
    return out


def lazy_greedy(obj: Objective, k: int) -> np.ndarray:
    """Lazy greedy (Minoux 1978): a heap of stale gains, re-evaluate the top until fresh; equals naive greedy."""
    first = obj.gains(np.arange(obj.n))
    heap = list(zip((-first).tolist(), range(obj.n), strict=True))
    heapq.heapify(heap)
    stamp = [0] * obj.n  # the step at which each heap key was computed
    out = np.empty(k, dtype=np.int64)
    for t in range(k):
        while True:
            i = heap[0][1]
            if stamp[i] == t:
                heapq.heappop(heap)
                break
            stamp[i] = t
            heapq.heapreplace(heap, (-obj.gain(i), i))
        obj.add(i)
        out[t] = i
    return out


def stochastic_greedy(obj: Objective, k: int, epsilon: float = 0.01, seed: int = 0) -> np.ndarray:
    """Stochastic greedy: each step takes the best of (N/k) log(1/eps) random remaining candidates."""
    rng = np.random.default_rng(seed)
    remaining = np.arange(obj.n)
    left = obj.n
    size = max(1, math.ceil(obj.n / k * math.log(1.0 / epsilon)))
    out = np.empty(k, dtype=np.int64)
    for t in range(k):
        pos = rng.choice(left, size, replace=False) if size < left else np.arange(left)
        cand = remaining[pos]
        g = obj.gains(cand)
        j = int(np.lexsort((cand, -g))[0])
        i = int(cand[j])
        obj.add(i)
        out[t] = i
        left -= 1
        remaining[pos[j]] = remaining[left]
    return out


def maximize(obj: Objective, k: int, method: str = "lazy", *, epsilon: float = 0.01, seed: int = 0) -> np.ndarray:
    """Greedily pick k positions maximising obj with 'lazy' (exact), 'naive' (reference) or 'stochastic' greedy."""
    k = min(k, obj.n)
    if method == "lazy":
        return lazy_greedy(obj, k)
    if method == "naive":
        return naive_greedy(obj, k)
    if method == "stochastic":
        return stochastic_greedy(obj, k, epsilon, seed)
    raise ValueError(f"unknown greedy method {method!r}; allowed: ['lazy', 'naive', 'stochastic']")


def _greedy_part(
    spec: ObjectiveSpec, n: int, emb: np.ndarray | None, k: int, method: str, epsilon: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Greedy on one partition: (picked local positions, their coverage weights, or None without an FL term)."""
    obj = build_objective(k, n, spec, emb=emb)
    picked = maximize(obj, k, method, epsilon=epsilon, seed=spec.seed)
    return picked, (coverage_weights(obj, emb) if obj.graph is not None else None)


_greedy_task = ray.remote(num_cpus=1)(_greedy_part)


def greedi(
    k: int,
    n: int,
    spec: ObjectiveSpec,
    *,
    partitions: int,
    emb: np.ndarray | None = None,
    method: str = "lazy",
    epsilon: float = 0.01,
) -> np.ndarray:
    """Select k of n positions with GreeDi over ``partitions`` Ray tasks; the objective of ``build_objective``.

    Without ``fl_unit`` each partition scales FL by its own size (N_part / k) and the merge by N / k."""
    perm = np.random.default_rng(spec.seed).permutation(n)
    parts = [np.sort(p) for p in np.array_split(perm, partitions) if p.size]
    refs = [
        _greedy_task.remote(spec.take(p), p.size, None if emb is None else emb[p], k, method, epsilon) for p in parts
    ]
    results = ray.get(refs)
    local = [p[picked] for p, (picked, _) in zip(parts, results, strict=True)]
    union = np.concatenate(local)
    has_fl = results[0][1] is not None
    weights = np.concatenate([w for _, w in results]) if has_fl else None
    merged_obj = build_objective(
        k, union.size, spec.take(union), emb=None if emb is None else emb[union], demand_weights=weights
    )
    merged = maximize(merged_obj, k, method, epsilon=epsilon, seed=spec.seed)
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


def run_greedy(p: dict, k: int, n: int, *, seed: int, emb: np.ndarray | None = None, graph=None, **terms) -> np.ndarray:
    """Maximise J (``terms``: the ObjectiveSpec fields modular, clusters, l_c, l_a, fl_unit, conc_unit) with the
    optimiser parameters in p: one machine, or GreeDi when partitions > 1. ``graph`` reuses a similarity graph
    already built on emb (one machine only)."""
    spec = ObjectiveSpec(knn=p["knn"], exact_limit=p["knn_exact_limit"], seed=seed, **terms)
    if p["partitions"] > 1:
        return greedi(k, n, spec, partitions=p["partitions"], emb=emb, method=p["greedy"], epsilon=p["epsilon"])
    obj = build_objective(k, n, spec, emb=emb, graph=graph)
    return maximize(obj, k, p["greedy"], epsilon=p["epsilon"], seed=seed)
