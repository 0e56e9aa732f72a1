"""Gradient-based selection.

- ``grand``: GraNd, the per-example gradient norm (Paul et al. 2021, "Deep Learning on a Data Diet"). O(N + k log k).
- ``el2n``: EL2N, the L2 norm of the error vector softmax(p) - onehot(y) (same paper). O(N + k log k).
- ``less``: LESS (Xia et al. 2024): cosine of each example's projected gradient to the mean projected gradient of
  each target skill's examples, max over target skills, top k. O(N * T * d + k log k) for T target skills.
  ``precondition: adam`` is LESS as its authors define it: pool examples are scored by their Adam update
  Gamma = m' / (sqrt(v') + eps) from the optimizer state saved at the end of the previous stage's training (the
  warm-up's before stage 1), targets by plain gradients; ``none`` (the default) projects plain SGD gradients for
  both (LESS-style). The scorer applies it (``scoring.features.adam_precondition``); with LoRA the moments are
  those of the previous stage's adapters, taken by parameter name.
"""

from __future__ import annotations

import numpy as np

from lhas_ray.selection.base import Selector, choice_param, register, top_k
from lhas_ray.selection.knn import max_similarity, normalize_rows
from lhas_ray.selection.pool import Pool


@register
class GraNd(Selector):
    """The k examples with the largest gradient norm."""

    name = "grand"

    def _requires(self) -> set[str]:
        return {"grad_norm"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return top_k(pool["grad_norm"], k)


@register
class EL2N(Selector):
    """The k examples with the largest EL2N score."""

    name = "el2n"

    def _requires(self) -> set[str]:
        return {"el2n"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return top_k(pool["el2n"], k)


def less_scores(grad: np.ndarray, target_grads: np.ndarray) -> np.ndarray:
    """max over target skills of cos(g_i, target_s), for every pool example."""
    best, _ = max_similarity(normalize_rows(grad), normalize_rows(target_grads))
    return best.astype(np.float64)


@register
class LESS(Selector):
    """The k examples whose projected gradient is most aligned with a target skill's mean gradient."""

    name = "less"
    params = {"precondition": choice_param("none", ("none", "adam"))}

    def _requires(self) -> set[str]:
        return {"grad"}

    def _context_fields(self) -> set[str]:
        return {"target_grads"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return top_k(less_scores(pool["grad"], pool.context.target_grads), k)
