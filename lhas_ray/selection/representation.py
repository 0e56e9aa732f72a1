"""Representation-based selection, RDS+ (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning").

Cosine similarity of each pool example's pooled embedding to each target example's, then round-robin over the target
examples: each target in turn takes its most similar not-yet-picked pool example. Each target only needs its top
L ~ k/m + margin pool examples, found by a blocked torch top-k: O(N m d + k) time, O(block * m + L m) memory for m
targets (L doubles in the rare case collisions exhaust a list).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lhas_ray.selection.base import Selector, register
from lhas_ray.selection.knn import BLOCK_BYTES, normalize_rows
from lhas_ray.selection.pool import Pool


def nearest_per_target(pool_emb: np.ndarray, target_emb: np.ndarray, depth: int) -> np.ndarray:
    """[m, depth] positions of each target's most cosine-similar pool examples, best first (blocked over the pool)."""
    x = torch.from_numpy(normalize_rows(pool_emb))
    t = torch.from_numpy(normalize_rows(target_emb))
    n, m = x.shape[0], t.shape[0]
    depth = min(depth, n)
    step = max(depth, BLOCK_BYTES // (4 * m))
    best_v = torch.empty(0, m)
    best_i = torch.empty(0, m, dtype=torch.int64)
    for s in range(0, n, step):
        v = torch.cat([best_v, x[s : s + step] @ t.T])
        i = torch.cat([best_i, torch.arange(s, min(s + step, n)).unsqueeze(1).expand(-1, m)])
        top_v, top_at = torch.topk(v, min(depth, v.shape[0]), dim=0)
        best_v, best_i = top_v, torch.gather(i, 0, top_at)
    return best_i.T.numpy()


def round_robin(lists: np.ndarray, k: int, n: int) -> tuple[np.ndarray, bool]:
    """Targets take turns picking their best unpicked example; returns (picks, complete) where complete is False if a
    target's list ran out before k picks."""
    picked = np.zeros(n, dtype=bool)
    rows = lists.tolist()
    ptr = [0] * len(rows)
    out: list[int] = []
    while len(out) < k:
        for t, row in enumerate(rows):
            p = ptr[t]
            while p < len(row) and picked[row[p]]:
                p += 1
            if p == len(row):
                return np.asarray(out, dtype=np.int64), False
            picked[row[p]] = True
            out.append(row[p])
            ptr[t] = p + 1
            if len(out) == k:
                break
    return np.asarray(out, dtype=np.int64), True


@register
class RDSPlus(Selector):
    """Round-robin nearest neighbours of the current stage's target examples in embedding space."""

    name = "rds"

    def _requires(self) -> set[str]:
        return {"emb"}

    def _context_fields(self) -> set[str]:
        return {"target_embs"}

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        targets = pool.context.target_embs
        depth = 2 * math.ceil(k / targets.shape[0]) + 16
        while True:
            picks, complete = round_robin(nearest_per_target(pool["emb"], targets, depth), k, pool.n)
            if complete or depth >= pool.n:
                return picks
            depth *= 2
