"""Diversity selection on embeddings.

- ``kcenter``: k-center greedy (Gonzalez 1985; the core-set selector of Sener & Savarese 2018): start from a seeded
  random example, then repeatedly take the example farthest from every chosen one; a 2-approximation of the minimax
  radius. O(N k d) time, O(N) extra memory.
- ``facility_location``: maximise FL(S) = sum_j max_{i in S} cos(e_i, e_j) (Cornuejols et al. 1977; coverage as in
  Mirzasoleiman et al. 2020 "CRAIG") with the shared lazy greedy over a sparse kNN graph: O(kNN search + nnz +
  re-evaluations * (knn + log N)), never a dense N x N matrix. ``partitions > 1`` runs GreeDi on Ray.
"""

from __future__ import annotations

import numpy as np

from lhas_ray.selection.base import OPTIMISER_PARAMS, Selector, choice_param, register
from lhas_ray.selection.knn import normalize_rows
from lhas_ray.selection.optimisers import run_greedy
from lhas_ray.selection.pool import Pool


def kcenter_greedy(x: np.ndarray, k: int, first: int) -> np.ndarray:
    """Gonzalez's farthest-first traversal from ``first``; ties go to the smaller position. Euclidean distance."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(k, dtype=np.int64)
    dist = np.full(x.shape[0], np.inf)
    i = first
    for t in range(k):
        out[t] = i
        np.minimum(dist, np.maximum(sq - 2.0 * (x @ x[i]) + sq[i], 0.0), out=dist)
        dist[i] = -1.0  # a chosen point never comes back, whatever the rounding (min keeps it at -1)
        i = int(np.argmax(dist))
    return out


@register
class KCenter(Selector):
    """k-center greedy on embeddings (Euclidean, or cosine distance with metric='cosine')."""

    name = "kcenter"
    params = {"metric": choice_param("euclidean", ("euclidean", "cosine"))}

    def _requires(self) -> set[str]:
        return {"emb"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        x = pool["emb"] if self.p["metric"] == "euclidean" else normalize_rows(pool["emb"])
        first = int(np.random.default_rng(pool.context.seed).integers(pool.n))
        return kcenter_greedy(x, k, first)


@register
class FacilityLocation(Selector):
    """Greedy facility location: the k examples that best cover the pool in embedding space."""

    name = "facility_location"
    params = dict(OPTIMISER_PARAMS)

    def _requires(self) -> set[str]:
        return {"emb"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return run_greedy(self.p, k, pool.n, seed=pool.context.seed, emb=pool["emb"], l_c=1.0)
