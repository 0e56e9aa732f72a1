"""Seeded random projections of per-example gradients to ``dim`` dims: Kronecker-structured (default) or dense.

``kronecker`` (LoGra's structure, Choe et al. 2024): a matrix-shaped gradient G (rows x cols) maps to
vec(P_r G P_c^T), i.e. vec(G) projected by P_r ⊗ P_c with P_r (d_r x rows), P_c (d_c x cols), d_r d_c = dim. Because
a linear layer's per-example gradient is a sum of outer products, G = sum_t a_t b_t^T, the projection is
sum_t (P_r a_t)(P_c b_t)^T and never needs G itself (``per_example.project_outers``). Tensors of more than two dims are
read as (shape[0], rest); 1-D parameters (biases, norm scales) take a dense matrix. ``dense``: one Gaussian
(numel x dim) matrix per parameter, as TRAK and LESS project. Entries have variance 1/d_r, 1/d_c, 1/dim, so both keep
squared norms in expectation. Matrices come from (seed, parameter index): every worker builds the same ones.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Projection = Literal["kronecker", "dense"]


def kron_split(dim: int) -> tuple[int, int]:
    """(d_r, d_c): the most balanced factorisation d_r * d_c = dim with d_r <= d_c (64 -> 8 x 8, 8 -> 2 x 4)."""
    d_r = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
    return d_r, dim // d_r


class GradientProjector:
    """Seeded random projection of each parameter's per-example gradient, summed over parameters, to ``dim`` dims.

    The matrices of a parameter are generated from (seed, parameter index) and cached when they fit in
    ``cache_elements`` floats (always, for ``kronecker``: they hold (d_r rows + d_c cols) floats per parameter).
    """

    def __init__(
        self,
        shapes: dict[str, torch.Size],
        dim: int,
        seed: int,
        kind: Projection = "kronecker",
        cache_elements: int = 1 << 26,
    ):
        if kind not in ("kronecker", "dense"):
            raise ValueError(f"projection must be 'kronecker' or 'dense', not {kind!r}")
        self.names = list(shapes)
        self.shapes = [tuple(int(d) for d in s) for s in shapes.values()]
        self.dim, self.seed, self.kind = dim, seed, kind
        total = sum(self._elements(i) for i in range(len(self.names)))
        self._cache = [self._matrices(i) for i in range(len(self.names))] if total <= cache_elements else None

    def is_kronecker(self, i: int) -> bool:
        """Whether parameter ``i`` is projected as a matrix (P_r, P_c) rather than by one dense matrix."""
        return self.kind == "kronecker" and len(self.shapes[i]) >= 2

    def _elements(self, i: int) -> int:
        shape = self.shapes[i]
        if self.is_kronecker(i):
            d_r, d_c = kron_split(self.dim)
            return d_r * shape[0] + d_c * int(np.prod(shape[1:]))
        return int(np.prod(shape)) * self.dim

    def _matrices(self, i: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        shape = self.shapes[i]
        if not self.is_kronecker(i):
            return (torch.randn(int(np.prod(shape)), self.dim, generator=gen) / np.sqrt(self.dim),)
        d_r, d_c = kron_split(self.dim)
        p_r = torch.randn(d_r, shape[0], generator=gen) / np.sqrt(d_r)
        p_c = torch.randn(d_c, int(np.prod(shape[1:])), generator=gen) / np.sqrt(d_c)
        return p_r, p_c

    def matrices(self, i: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(P_r, P_c) for a Kronecker-projected parameter, else (M,) with M (numel x dim); on ``device``."""
        mats = self._cache[i] if self._cache is not None else self._matrices(i)
        return tuple(m.to(device) for m in mats)

    def project(self, i: int, grad: torch.Tensor) -> torch.Tensor:
        """Projection [B, dim] of parameter ``i``'s materialised per-example gradients [B, *shape]."""
        g = grad.float()
        mats = self.matrices(i, g.device)
        if not self.is_kronecker(i):
            return g.flatten(1) @ mats[0]
        p_r, p_c = mats
        return (p_r @ g.reshape(len(g), p_r.shape[1], -1) @ p_c.T).flatten(1)

    def __call__(self, grads: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(unit-normalised projected gradients [B, d], full gradient norms [B]) from materialised gradients."""
        proj = sum(self.project(i, grads[name]) for i, name in enumerate(self.names))
        sq = sum(grads[name].float().flatten(1).pow(2).sum(1) for name in self.names)
        return unit_rows(proj), sq.sqrt().cpu().numpy().astype(np.float32)


def unit_rows(proj: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit norm (cosines are what selectors read), as float32 numpy."""
    return (proj / proj.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32)
