"""Quality selection: the k examples with the best quality score, e.g. the negative loss under a reference model
(perplexity filtering, as in Marion et al. 2023 "When Less is More"). O(N + k log k).
"""

from __future__ import annotations

import numpy as np

from lhas_ray.selection.base import Selector, register, top_k
from lhas_ray.selection.pool import Pool


@register
class QualitySelector(Selector):
    """The k examples with the highest ``quality`` (higher = better)."""

    name = "quality"

    def _requires(self) -> set[str]:
        return {"quality"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return top_k(pool["quality"], k)
