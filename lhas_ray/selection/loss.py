"""Loss-based selection: highest loss first (hard/informative examples, as in loss-based active learning and
prioritised training, Loshchilov & Hutter 2015) or lowest loss first (easy/clean examples). O(N + k log k).
"""

from __future__ import annotations

import numpy as np

from lhas_ray.selection.base import Selector, register, top_k
from lhas_ray.selection.pool import Pool


@register
class LossHigh(Selector):
    """The k examples with the highest loss under the current model."""

    name = "loss_high"

    def _requires(self) -> set[str]:
        return {"loss"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return top_k(pool["loss"], k)


@register
class LossLow(Selector):
    """The k examples with the lowest loss under the current model."""

    name = "loss_low"

    def _requires(self) -> set[str]:
        return {"loss"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        return top_k(-pool["loss"], k)
