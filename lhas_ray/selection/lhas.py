"""Long-Horizon Aware Selection (LHAS, DESIGN.md): greedy maximisation of

    J(S) = l_u * sum_{i in S} u_i + l_c * FL(S) + l_f * sum_{i in S} cos(g_i, g_proxy) - l_a * Conc(S)

with u the immediate utility min-max scaled to [0, 1] over the pool, FL(S) = sum_j max_{i in S} cos(e_i, e_j)
facility-location coverage of the pool on a sparse kNN graph, scaled by k / N; g_proxy the mean projected gradient of
a future-proxy set (never the real next stage); Conc(S) = k * sum_c p_c(S)^2 = sum_c n_c(S)^2 / k the Herfindahl
concentration over clusters: seeded spherical k-means clusters of ``emb`` by default (``clusters: auto`` or
``kmeans``). The ``skill`` column is used only when the config says ``clusters: skill`` (metadata a user really has,
such as data-source tags): the built-in suite's skill labels are the partition along which concentration damage is
measured, so reading them by default would give LHAS an oracle no other selector has. A skill column with fewer than
2 distinct values carries no partition, and falls back to k-means with a warning.
J is submodular (modular + FL + a concave function of cluster counts) but not monotone; the shared lazy greedy
returns exactly the greedy sequence. Sources: facility location (Cornuejols et al. 1977; Mirzasoleiman et al. 2020),
gradient alignment (LESS, Xia et al. 2024), Herfindahl concentration (Herfindahl 1950), lazy greedy (Minoux 1978).
Cost: O(kNN search + N d + lazy greedy) on one node; ``partitions > 1`` runs GreeDi on Ray (see ``greedi``).
"""

from __future__ import annotations

import logging

import numpy as np

from lhas_ray.selection.base import (
    OPTIMISER_PARAMS,
    UTILITIES,
    Selector,
    choice_param,
    float_param,
    int_param,
    normalise01,
    register,
    utility_values,
)
from lhas_ray.selection.greedi import run_greedy
from lhas_ray.selection.knn import kmeans, normalize_rows
from lhas_ray.selection.validation import Pool

log = logging.getLogger(__name__)


def proxy_alignment(grad: np.ndarray, proxy_grad: np.ndarray) -> np.ndarray:
    """cos(g_i, g_proxy) for every pool example (float64)."""
    p = np.asarray(proxy_grad, dtype=np.float32)
    return (normalize_rows(grad) @ (p / np.linalg.norm(p))).astype(np.float64)


@register
class LHAS(Selector):
    """The four-term long-horizon objective: utility, coverage, future alignment, minus skill concentration."""

    name = "lhas"
    params = {
        "l_u": float_param(1.0),
        "l_c": float_param(1.0),
        "l_f": float_param(1.0),
        "l_a": float_param(1.0),
        "utility": choice_param("quality", tuple(UTILITIES)),
        "clusters": choice_param("auto", ("auto", "skill", "kmeans")),
        "n_clusters": int_param(16, 1),
        **OPTIMISER_PARAMS,
    }

    def _check_params(self) -> None:
        if not any(self.p[w] > 0 for w in ("l_u", "l_c", "l_f", "l_a")):
            raise ValueError(
                "selector 'lhas' parameters 'l_u', 'l_c', 'l_f', 'l_a' are all 0; at least one must be > 0"
            )

    def _requires(self) -> set[str]:
        p, need = self.p, set()
        if p["l_u"] > 0:
            need.add(UTILITIES[p["utility"]][0])
        if p["l_c"] > 0 or p["l_a"] > 0:
            need.add("emb")  # k-means clusters, and the fallback when a declared skill column has one value
        if p["l_f"] > 0:
            need.add("grad")
        if p["l_a"] > 0 and p["clusters"] == "skill":
            need.add("skill")
        return need

    def _clusters(self, pool: Pool, seed: int) -> np.ndarray:
        """The partition Conc(S) counts over: declared skill tags, else seeded k-means clusters of the embeddings."""
        if self.p["clusters"] == "skill":
            skills = pool["skill"]
            if len(np.unique(skills)) >= 2:
                return skills
            log.warning(
                "lhas: clusters 'skill' but the pool's skill column has a single value: using %d k-means clusters",
                self.p["n_clusters"],
            )
        return kmeans(normalize_rows(pool["emb"]), self.p["n_clusters"], seed=seed)[1]

    def _context_fields(self) -> set[str]:
        return {"proxy_grad"} if self.p["l_f"] > 0 else set()

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        p, seed = self.p, pool.context.seed
        modular = None
        if p["l_u"] > 0:
            modular = p["l_u"] * normalise01(utility_values(pool, p["utility"]))
        if p["l_f"] > 0:
            align = p["l_f"] * proxy_alignment(pool["grad"], pool.context.proxy_grad)
            modular = align if modular is None else modular + align
        clusters = None
        if p["l_a"] > 0:
            clusters = self._clusters(pool, seed)
        emb = pool["emb"] if p["l_c"] > 0 else None
        return run_greedy(
            p, k, pool.n, seed=seed, emb=emb, modular=modular, clusters=clusters, l_c=p["l_c"], l_a=p["l_a"]
        )
