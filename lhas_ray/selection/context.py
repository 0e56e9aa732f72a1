"""What a selector may know besides the pool's features: the current target, a future proxy, and the seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SelectionContext:
    """Inputs a selector needs beyond the feature table; the protocol fills only the fields a selector asks for."""

    target_grads: np.ndarray | None = None  # [n_target_skills, d] mean projected gradient per target skill (LESS)
    target_embs: np.ndarray | None = None  # [m, d_emb] embeddings of the current stage's target examples (RDS+)
    proxy_grad: np.ndarray | None = None  # [d] mean projected gradient of a future-proxy set, never the next stage
    seed: int = 0  # seeds every random choice a selector makes (random order, first k-center, k-means, partitions)
