"""Long-Horizon Aware Selection (LHAS, DESIGN.md): greedy maximisation of

    J(S) = l_u * U(S) + l_c * C(S) + l_f * F(S) - l_a * A(S)

each term in its own unit, the spread of its marginal gains over the pool at the start of greedy (``term_units``):
U(S) = sum_{i in S} u_i / sd(u), u the immediate utility min-max scaled to [0, 1]; C(S) = FL(S) / sd(FL({i})),
FL(S) = sum_{j in P} max_{i in S} max(0, cos(e_i, e_j)) facility-location coverage on a sparse kNN graph;
F(S) = sum_{i in S} cos(g_i, g_proxy) / sd(cos(g, g_proxy)), g_proxy the mean projected gradient of a future-proxy set
(``proxy``: 'replay', the warm-up mixture and the stages already trained, never a later stage; or 'broad');
A(S) = (C / 2k) sum_c n_c(S)^2, the Herfindahl concentration k sum_c p_c^2 in the unit where a pick into a cluster
holding its even share k/C costs one more than a pick into an empty cluster. So equal weights mean equal influence on
greedy's first choices, and ``terms_`` (after ``select``) holds each term's contribution to J of the selection.

Clusters are seeded spherical k-means clusters of ``emb`` by default (``clusters: auto`` or ``kmeans``). The
``skill`` column is used only when the config says ``clusters: skill`` (metadata a user really has, such as
data-source tags): the built-in suite's skill labels are the partition along which concentration damage is
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
    ParamError,
    Selector,
    choice_param,
    float_param,
    int_param,
    normalise01,
    register,
    utility_values,
)
from lhas_ray.selection.knn import kmeans, max_similarity, normalize_rows
from lhas_ray.selection.objective import Objective, first_fl_gains, similarity_graph
from lhas_ray.selection.optimisers import run_greedy
from lhas_ray.selection.pool import Pool

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
        # where g_proxy comes from (lhas_ray.tasks.suite.Suite.future_proxy): 'replay' knows nothing of later stages
        "proxy": choice_param("replay", ("replay", "broad")),
        **OPTIMISER_PARAMS,
    }

    def _check_params(self) -> None:
        if not any(self.p[w] > 0 for w in ("l_u", "l_c", "l_f", "l_a")):
            raise ParamError("lhas", None, "'l_u', 'l_c', 'l_f', 'l_a' are all 0; at least one must be > 0")

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
        emb = pool["emb"] if p["l_c"] > 0 else None  # coverage's embeddings (clusters read emb themselves)
        raw = {"utility": None, "alignment": None}  # the modular terms' first-step gains
        if p["l_u"] > 0:
            raw["utility"] = normalise01(utility_values(pool, p["utility"]))
        if p["l_f"] > 0:
            raw["alignment"] = proxy_alignment(pool["grad"], pool.context.proxy_grad)
        graph = clusters = None
        if p["l_c"] > 0 and p["partitions"] == 1:
            graph = similarity_graph(emb, p["knn"], exact_limit=p["knn_exact_limit"], seed=seed)
        if p["l_a"] > 0:
            clusters = self._clusters(pool, seed)
        units = term_units(raw, k, graph=graph, emb=emb, clusters=clusters, p=p)
        modular = None
        for term, weight in (("utility", p["l_u"]), ("alignment", p["l_f"])):
            if raw[term] is not None:
                part = weight * raw[term] / units[term]
                modular = part if modular is None else modular + part
        picks = run_greedy(
            p,
            k,
            pool.n,
            seed=seed,
            emb=emb,
            modular=modular,
            clusters=clusters,
            l_c=p["l_c"],
            l_a=p["l_a"],
            fl_unit=units.get("coverage"),
            conc_unit=units.get("concentration"),
            graph=graph,
        )
        self.terms_ = term_contributions(p, raw, units, picks, graph=graph, emb=emb, clusters=clusters)
        return picks


TERMS = ("utility", "coverage", "alignment", "concentration")
WEIGHT_OF = {"utility": "l_u", "coverage": "l_c", "alignment": "l_f", "concentration": "l_a"}
_FL_SAMPLE = 50_000


def _spread(x: np.ndarray) -> float:
    """Population std of a term's first-step gains; 1 where it is 0 (a constant term cannot change a choice)."""
    s = float(np.std(np.asarray(x, dtype=np.float64)))
    return s if np.isfinite(s) and s > 0 else 1.0


def term_units(raw: dict, k: int, *, graph, emb, clusters, p: dict) -> dict[str, float]:
    """Each term's unit: the spread (std over the pool) of its marginal gains at the start of greedy.

    Utility and alignment gains are modular, so their first-step gains are u_i and cos(g_i, g_proxy); coverage's are
    FL({i}) on the kNN graph (on a sample of at most 50k points when GreeDi partitions the pool: the kNN graph's
    in-degrees do not grow with N). Concentration's first gains are all equal, so its unit is set by the one spread
    it has: adding a pick to a cluster already holding its even share k/C costs 2/C more than adding it to an empty
    one; that difference is one unit (conc_unit = C / (2k) per n_c^2). Dividing by these units makes equal weights
    mean equal influence on greedy's first choices.
    """
    units: dict[str, float] = {}
    for term in ("utility", "alignment"):
        if raw[term] is not None:
            units[term] = _spread(raw[term])
    if emb is not None:
        if graph is None:
            rows = emb
            if len(emb) > _FL_SAMPLE:
                rows = emb[np.sort(np.random.default_rng(0).choice(len(emb), _FL_SAMPLE, replace=False))]
            graph = similarity_graph(rows, p["knn"], exact_limit=p["knn_exact_limit"])
        units["coverage"] = _spread(first_fl_gains(graph))
    if clusters is not None:
        n_clusters = max(len(np.unique(clusters)), 1)
        units["concentration"] = n_clusters / (2.0 * k)
    return units


def term_contributions(
    p: dict, raw: dict, units: dict, picks: np.ndarray, *, graph, emb, clusters
) -> dict[str, dict[str, float]]:
    """Each term's weighted, scaled contribution to J of the selected set (they sum to J), with its weight and unit.

    Coverage is FL(S) on the kNN graph the greedy used; under GreeDi (no full-pool graph) it is FL(S) with exact
    cosines to the selected points, so the four then sum to J only approximately.
    """
    out: dict[str, dict[str, float]] = {}
    for term in TERMS:
        weight = float(p[WEIGHT_OF[term]])
        if weight == 0 or term not in units:
            continue
        if term in ("utility", "alignment"):
            value = float(raw[term][picks].sum()) / units[term]
        elif term == "coverage":
            if graph is not None:
                obj = Objective(len(emb), graph=graph, fl_coef=1.0)
                for i in picks.tolist():
                    obj.add(i)
                fl = obj.fl_value()
            else:
                x = normalize_rows(emb)
                fl = float(np.maximum(max_similarity(x, x[picks])[0], 0.0).sum())
            value = fl / units[term]
        else:
            counts = np.unique(clusters[picks], return_counts=True)[1]
            value = -float((counts.astype(np.float64) ** 2).sum()) * units[term]
        out[term] = {"weight": weight, "unit": float(units[term]), "contribution": weight * value}
    return out
