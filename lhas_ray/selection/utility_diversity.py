"""Utility-diversity selection.

- ``utility_diversity``: DEITA's score-first, diversity-aware selection (Liu et al. 2024, "What Makes Good Data for
  Alignment?"): walk the pool by utility, best first, and skip a candidate whose cosine to an already chosen example
  exceeds ``threshold``. If the threshold leaves fewer than k, the highest-utility skipped examples fill the rest.
  Candidates go in blocks of B: their max cosine to the chosen set is one blocked matmul, and clashes within a block
  are resolved one accepted pick at a time with a vectorised mask. O(N log N + N k d) worst case.
- ``fl_utility``: J(S) = sum_{i in S} u_i + weight * (k / N) * FL(S), u min-max scaled to [0, 1] (the FL scaling of
  ``objective.build_objective``), maximised by the shared lazy greedy. O(kNN search + greedy).
"""

from __future__ import annotations

import numpy as np
import torch

from lhas_ray.selection.base import (
    OPTIMISER_PARAMS,
    UTILITIES,
    Selector,
    choice_param,
    float_param,
    normalise01,
    register,
    top_k,
    utility_values,
)
from lhas_ray.selection.knn import max_similarity, normalize_rows
from lhas_ray.selection.optimisers import run_greedy
from lhas_ray.selection.pool import Pool

BLOCK = 4096


def deita_select(x: np.ndarray, order: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Accept candidates in ``order`` unless their cosine to an accepted one exceeds threshold; x has unit rows."""
    chosen = np.empty(k, dtype=np.int64)
    taken = np.zeros(x.shape[0], dtype=bool)
    count = 0
    for s in range(0, order.size, BLOCK):
        block = order[s : s + BLOCK]
        if count:
            best, _ = max_similarity(x[block], x[chosen[:count]])
            block = block[best <= threshold]
        if block.size == 0:
            continue
        xb = torch.from_numpy(x[block])
        clash = (xb @ xb.T).numpy() > threshold
        alive = np.ones(block.size, dtype=bool)
        while count < k and alive.any():
            j = int(np.argmax(alive))
            chosen[count] = block[j]
            count += 1
            alive &= ~clash[j]
            alive[j] = False
        taken[chosen[:count]] = True
        if count == k:
            return chosen
    fill = order[~taken[order]][: k - count]
    return np.concatenate([chosen[:count], fill])


@register
class UtilityDiversity(Selector):
    """DEITA-style: best utility first, skipping near-duplicates (cosine > threshold) of what is already chosen."""

    name = "utility_diversity"
    params = {"utility": choice_param("quality", tuple(UTILITIES)), "threshold": float_param(0.9, -1.0, 1.0)}

    def _requires(self) -> set[str]:
        return {UTILITIES[self.p["utility"]][0], "emb"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        order = top_k(utility_values(pool, self.p["utility"]), pool.n)
        return deita_select(normalize_rows(pool["emb"]), order, k, self.p["threshold"])


@register
class FLUtility(Selector):
    """Utility plus facility location: sum of [0, 1]-scaled utilities + weight * (k / N) * FL(S), lazy greedy."""

    name = "fl_utility"
    params = {"utility": choice_param("quality", tuple(UTILITIES)), "weight": float_param(1.0), **OPTIMISER_PARAMS}

    def _requires(self) -> set[str]:
        return {UTILITIES[self.p["utility"]][0], "emb"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        u = normalise01(utility_values(pool, self.p["utility"]))
        return run_greedy(self.p, k, pool.n, seed=pool.context.seed, emb=pool["emb"], modular=u, l_c=self.p["weight"])
