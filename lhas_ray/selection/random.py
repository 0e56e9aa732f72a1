"""Random selection: the baseline every selector must beat. O(k) time after validation (O(N) worst case)."""

from __future__ import annotations

import numpy as np

from lhas_ray.selection.base import Selector, int_param, register
from lhas_ray.selection.pool import Pool


@register
class RandomSelector(Selector):
    """k examples uniformly at random, seeded by the ``seed`` parameter or else by ``context.seed``."""

    name = "random"
    params = {"seed": int_param(None, 0, optional=True)}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        seed = self.p["seed"] if self.p["seed"] is not None else pool.context.seed
        return np.random.default_rng(seed).choice(pool.n, k, replace=False)
