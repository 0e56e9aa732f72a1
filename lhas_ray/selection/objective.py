"""The function every submodular selector (facility_location, fl_utility, lhas) maximises: J(S), its similarity graph,
its terms and their units. The optimisers that maximise it live in ``optimisers.py``.

Objective (DESIGN.md, LHAS with its terms already weighted)::

    J(S) = sum_{i in S} m_i  +  c_fl * FL_w(S)  -  c_conc * sum_c n_c(S)^2
    FL_w(S) = sum_j w_j * max_{i in S} max(0, cos(e_i, e_j))     over a sparse kNN graph

m is any modular score, w are demand weights (1, or the points a GreeDi candidate stands for), n_c(S) the number of
picks in cluster c. Each term is submodular (FL: Cornuejols et al. 1977; -n_c^2: concave of a count), so J is.
Adding i changes FL by sum_j w_j max(0, q_ij - cover_j) and sum_c n_c^2 by 2 n_c + 1.

Exactness: similarities are quantised to integers (q = round(cos * 2^24)), so coverage sums are exact in int64 and
every marginal gain is the same float whichever way it is computed; hence lazy greedy (Minoux 1978) returns exactly
the naive-greedy sequence (ties go to the smaller position, i.e. the smaller example_id). Quantising moves a cosine
by at most 2^-25, below float32 resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lhas_ray.selection.knn import knn_graph, max_similarity, normalize_rows
from lhas_ray.selection.pool import validate_features

QUANT = 1 << 24  # similarity quantum: q = round(cos * QUANT)


@dataclass(frozen=True)
class SimilarityGraph:
    """Facility-major sparse similarity: facility i covers demand[indptr[i]:indptr[i+1]] with weights q (int64)."""

    indptr: np.ndarray  # int64 [n + 1]
    demand: np.ndarray  # int32 [nnz]
    q: np.ndarray  # int64 [nnz], round(max(cos, 0) * QUANT); every facility covers itself with QUANT
    n: int

    @property
    def nnz(self) -> int:
        """Number of stored (facility, demand) pairs."""
        return int(self.demand.shape[0])


def similarity_graph(
    emb: np.ndarray, knn: int = 32, *, exact_limit: int = 50_000, seed: int = 0, unit: bool = False
) -> SimilarityGraph:
    """Cosine kNN graph of emb: facility i covers demand j when i is among j's knn nearest (j always covers itself)."""
    x = emb if unit else normalize_rows(emb)
    n = x.shape[0]
    nbr, sim = knn_graph(x, knn, exact_limit=exact_limit, seed=seed)
    q = np.rint(np.clip(sim, 0.0, 1.0) * np.float32(QUANT)).astype(np.int64)
    keep = (nbr >= 0) & (q > 0)
    keep[:, 0] = True
    rows = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], nbr.shape)
    facility, demand, q = nbr[keep], rows[keep], q[keep]
    del nbr, sim, keep
    order = np.argsort(facility, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(facility, minlength=n), out=indptr[1:])
    return SimilarityGraph(indptr=indptr, demand=demand[order], q=q[order], n=n)


@dataclass(frozen=True)
class ObjectiveSpec:
    """What J is made of, apart from the ground set's embeddings: the one place its parameters are spelled out.

    ``modular`` are per-point scores (already weighted), ``clusters`` per-point cluster ids; ``l_c``/``l_a`` weigh
    coverage and concentration, each in its unit (``fl_unit``, ``conc_unit``; None: the defaults of
    ``build_objective``); ``knn``, ``exact_limit`` and ``seed`` shape the similarity graph.
    """

    modular: np.ndarray | None = None
    clusters: np.ndarray | None = None
    l_c: float = 0.0
    l_a: float = 0.0
    fl_unit: float | None = None
    conc_unit: float | None = None
    knn: int = 32
    exact_limit: int = 50_000
    seed: int = 0

    def take(self, idx: np.ndarray) -> ObjectiveSpec:
        """The same objective on the points at positions ``idx`` (a GreeDi partition, or the merged picks)."""
        return dataclasses.replace(
            self,
            modular=None if self.modular is None else self.modular[idx],
            clusters=None if self.clusters is None else self.clusters[idx],
        )


class Objective:
    """J(S) = sum_{i in S} m_i + c_fl * FL_w(S) - c_conc * sum_c n_c(S)^2, with incremental state for greedy."""

    def __init__(
        self,
        n: int,
        *,
        modular: np.ndarray | None = None,
        graph: SimilarityGraph | None = None,
        fl_coef: float = 0.0,
        demand_weights: np.ndarray | None = None,
        clusters: np.ndarray | None = None,
        conc_coef: float = 0.0,
    ) -> None:
        self.n = n
        self.modular = None if modular is None else np.asarray(modular, dtype=np.float64)
        self.graph = graph if (graph is not None and fl_coef != 0.0) else None
        self.fl_coef = float(fl_coef)
        self.weights = None if demand_weights is None else np.asarray(demand_weights, dtype=np.int64)
        self.clusters = None if (clusters is None or conc_coef == 0.0) else np.asarray(clusters, dtype=np.int64)
        self.conc_coef = float(conc_coef)
        self.cover = np.zeros(n, dtype=np.int64)  # current max q over S of each demand point
        self.counts = np.zeros(0 if self.clusters is None else int(self.clusters.max()) + 1, dtype=np.int64)
        self.selected: list[int] = []

    def reset(self) -> None:
        """Empty S, keeping the graph and scores."""
        self.cover[:] = 0
        self.counts[:] = 0
        self.selected = []

    def gains(self, cand: np.ndarray) -> np.ndarray:
        """Marginal gains J(S + i) - J(S) for an array of candidate positions (vectorised)."""
        cand = np.asarray(cand, dtype=np.int64)
        g = self.modular[cand] if self.modular is not None else np.zeros(cand.shape[0])
        if self.graph is not None:
            g = g + self.fl_coef * self._fl_gains(cand)
        if self.clusters is not None:
            g = g - self.conc_coef * (2 * self.counts[self.clusters[cand]] + 1)
        return g

    def gain(self, i: int) -> float:
        """Marginal gain of one candidate; the same float ``gains([i])`` returns."""
        g = float(self.modular[i]) if self.modular is not None else 0.0
        if self.graph is not None:
            s, e = self.graph.indptr[i], self.graph.indptr[i + 1]
            dem = self.graph.demand[s:e]
            v = self.graph.q[s:e] - self.cover[dem]
            np.maximum(v, 0, out=v)
            if self.weights is not None:
                v *= self.weights[dem]
            g = g + self.fl_coef * int(v.sum())
        if self.clusters is not None:
            g = g - self.conc_coef * (2 * int(self.counts[self.clusters[i]]) + 1)
        return g

    def _fl_gains(self, cand: np.ndarray) -> np.ndarray:
        gr = self.graph
        if cand.shape[0] == self.n and np.array_equal(cand, np.arange(self.n)):
            dem, q, starts = gr.demand, gr.q, gr.indptr[:-1]
        else:
            lens = gr.indptr[cand + 1] - gr.indptr[cand]
            starts = np.zeros(cand.shape[0], dtype=np.int64)
            np.cumsum(lens[:-1], out=starts[1:])
            idx = np.repeat(gr.indptr[cand] - starts, lens) + np.arange(int(lens.sum()))
            dem, q = gr.demand[idx], gr.q[idx]
        v = q - self.cover[dem]
        np.maximum(v, 0, out=v)
        if self.weights is not None:
            v *= self.weights[dem]
        return np.add.reduceat(v, starts)  # segments are never empty: every facility covers itself

    def add(self, i: int) -> None:
        """Put position i into S and update the coverage and cluster counts."""
        if self.graph is not None:
            s, e = self.graph.indptr[i], self.graph.indptr[i + 1]
            dem = self.graph.demand[s:e]
            self.cover[dem] = np.maximum(self.cover[dem], self.graph.q[s:e])
        if self.clusters is not None:
            self.counts[self.clusters[i]] += 1
        self.selected.append(int(i))

    def _coverage(self) -> int:
        if self.graph is None:
            return 0
        return int((self.cover if self.weights is None else self.cover * self.weights).sum())

    def fl_value(self) -> float:
        """FL_w(S) of the current S in cosine units (0 when the objective has no facility-location term)."""
        return self._coverage() / QUANT

    def value(self) -> float:
        """J(S) of the current S."""
        total = float(self.modular[self.selected].sum()) if self.modular is not None and self.selected else 0.0
        total += self.fl_coef * self._coverage()
        if self.clusters is not None:
            total -= self.conc_coef * float((self.counts**2).sum())
        return total


def build_objective(
    k: int,
    n: int,
    spec: ObjectiveSpec | None = None,
    *,
    emb: np.ndarray | None = None,
    demand_weights: np.ndarray | None = None,
    graph: SimilarityGraph | None = None,
    **fields,
) -> Objective:
    """J = modular + l_c * FL(S) / fl_unit - l_a * conc_unit * sum_c n_c(S)^2, from ``spec`` (or its ``fields``).

    Default units: fl_unit = N / k (FL, a sum over N demand points each at most 1, on the [0, k] scale of k utilities
    in [0, 1]) and conc_unit = 1 / k (Conc(S) = sum_c n_c^2 / k = k sum_c p_c^2). LHAS passes units measured on the
    pool instead (``lhas.term_units``). ``graph``: a similarity graph already built on emb.
    """
    s = spec if spec is not None else ObjectiveSpec(**fields)
    if s.l_c > 0 and graph is None:
        if emb is None:
            raise ValueError("a facility-location term needs embeddings")
        graph = similarity_graph(emb, s.knn, exact_limit=s.exact_limit, seed=s.seed)
    total = n if demand_weights is None else int(np.sum(demand_weights))
    return Objective(
        n,
        modular=s.modular,
        graph=graph if s.l_c > 0 else None,
        fl_coef=s.l_c / (s.fl_unit if s.fl_unit else total / k) / QUANT,
        demand_weights=demand_weights,
        clusters=s.clusters,
        conc_coef=s.l_a * (s.conc_unit if s.conc_unit else 1.0 / k),
    )


def first_fl_gains(graph: SimilarityGraph) -> np.ndarray:
    """FL({i}) for every facility i of the graph, in cosine units: its coverage gain as greedy's first pick."""
    return np.add.reduceat(graph.q, graph.indptr[:-1]).astype(np.float64) / QUANT


def coverage_weights(obj: Objective, emb: np.ndarray) -> np.ndarray:
    """How many ground points (times their demand weight) each selected point covers best: GreeDi's merge weights.

    A point takes the selected facility with the largest graph similarity; a point no selected facility reaches in the
    graph goes to its exact nearest selected point (blocked dot products over those points only).
    """
    sel = np.asarray(obj.selected, dtype=np.int64)
    n = obj.n
    owner = np.full(n, -1, dtype=np.int64)
    if obj.graph is not None:
        gr = obj.graph
        lens = gr.indptr[sel + 1] - gr.indptr[sel]
        starts = np.zeros(sel.shape[0], dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        idx = np.repeat(gr.indptr[sel] - starts, lens) + np.arange(int(lens.sum()))
        fac, dem, q = np.repeat(np.arange(sel.shape[0]), lens), gr.demand[idx].astype(np.int64), gr.q[idx]
        order = np.lexsort((fac, -q, dem))
        first = order[np.concatenate([[True], dem[order][1:] != dem[order][:-1]])]
        owner[dem[first]] = fac[first]
    lost = np.flatnonzero(owner < 0)
    if lost.size:
        x = normalize_rows(emb)
        _, owner[lost] = max_similarity(x[lost], x[sel])
    w = np.ones(n, dtype=np.int64) if obj.weights is None else obj.weights
    return np.bincount(owner, weights=w, minlength=sel.shape[0]).astype(np.int64)


def facility_location_value(
    features: pa.Table | np.ndarray, selected: np.ndarray, *, knn: int | None = None, exact_limit: int = 50_000
) -> float:
    """FL(S) = sum_j max(0, max_{i in S} cos(e_i, e_j)) of a selection, so the protocol can report coverage.

    ``features`` is a feature table with ``example_id`` and ``emb`` (then ``selected`` are example_ids) or an
    embedding array [N, d] (then ``selected`` are row positions). With ``knn=None`` the value is exact, O(N |S| d) in
    blocks; with ``knn`` it is the sparse-graph value the greedy optimises, O(kNN search). Divide by N for a mean.
    """
    selected = np.asarray(selected, dtype=np.int64)
    if isinstance(features, (pa.Table, pa.RecordBatch)):
        pool = validate_features(features, 1, {"emb"}, selector="facility_location_value")
        pos = np.searchsorted(pool.example_id, selected)
        if selected.size and (
            pos.max() >= pool.n or not np.array_equal(pool.example_id[np.minimum(pos, pool.n - 1)], selected)
        ):
            raise ValueError("facility_location_value: some selected example_ids are not in the features table")
        emb = pool["emb"]
    else:
        emb, pos = np.asarray(features, dtype=np.float32), selected
        if pos.size and (pos.min() < 0 or pos.max() >= emb.shape[0]):
            raise ValueError("facility_location_value: selected positions fall outside the embedding array")
    if pos.size == 0:
        return 0.0
    x = normalize_rows(emb)
    if knn is not None:
        obj = Objective(x.shape[0], graph=similarity_graph(x, knn, exact_limit=exact_limit, unit=True), fl_coef=1.0)
        for i in np.unique(pos):
            obj.add(int(i))
        return obj.fl_value()
    best, _ = max_similarity(x, x[np.unique(pos)])
    return float(np.maximum(best, 0.0).astype(np.float64).sum())
