"""Tests that stay valid with few seeds: exact paired sign-flip permutation tests, t intervals, Holm-Bonferroni.

Differences are paired by seed (seed r gives every selector the same data), so the unit of evidence is the seed:
with n seeds the exact sign-flip test enumerates all 2^n sign patterns of the n differences (Monte Carlo beyond
``EXACT_MAX_SEEDS``), and its smallest attainable p-value is 1 / 2^n (one-sided). Every array function is batched
over leading axes; NaN marks a missing seed and the test then runs on the seeds present.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

EXACT_MAX_SEEDS = 16
ALTERNATIVES = ("two-sided", "greater", "less")


def _sign_patterns(n: int, n_mc: int, seed: int) -> tuple[np.ndarray, bool]:
    """All 2^n sign patterns as a [2^n, n] matrix when n <= EXACT_MAX_SEEDS, else n_mc random ones."""
    if n <= EXACT_MAX_SEEDS:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        return 1.0 - 2.0 * bits, True
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size=(n_mc, n)), False


def sign_flip_pvalue(
    d: np.ndarray, alternative: str = "two-sided", *, n_mc: int = 20_000, seed: int = 0
) -> np.ndarray | float:
    """Paired sign-flip permutation p-value of H0 "the differences d are symmetric about 0", along the last axis.

    The statistic is the sum of the differences (equivalently their mean). 'greater' tests for a positive mean,
    'less' for a negative one. NaN entries are seeds without a value: they are left out (a zero contributes nothing
    to any pattern's sum, so enumerating them changes no share). Exact for n <= 16 seeds; beyond, a Monte Carlo
    p-value (1 + hits) / (1 + n_mc). NaN where no seed has a value.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    d = np.asarray(d, dtype=np.float64)
    present = ~np.isnan(d)
    x = np.where(present, d, 0.0)
    n = d.shape[-1]
    signs, exact = _sign_patterns(n, n_mc, seed)
    observed = x.sum(axis=-1)
    perm = x @ signs.T  # [..., patterns]
    tol = 1e-9 * np.maximum(np.abs(x).sum(axis=-1), 1e-300)[..., None]
    if alternative == "greater":
        hits = perm >= observed[..., None] - tol
    elif alternative == "less":
        hits = perm <= observed[..., None] + tol
    else:
        hits = np.abs(perm) >= np.abs(observed)[..., None] - tol
    count = hits.sum(axis=-1)
    p = count / signs.shape[0] if exact else (1 + count) / (1 + signs.shape[0])
    p = np.where(present.any(axis=-1), p, np.nan)
    return float(p) if np.ndim(p) == 0 else p


def min_attainable_p(n_seeds: int, alternative: str = "greater") -> float:
    """The smallest p-value the exact sign-flip test can return with n seeds (1/2^n one-sided, 2/2^n two-sided)."""
    return (1.0 if alternative != "two-sided" else 2.0) / 2.0 ** max(n_seeds, 0)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) of the Student-t interval for the mean along the last axis; lo/hi NaN with fewer than 2 seeds."""
    d = np.asarray(d, dtype=np.float64)
    n = (~np.isnan(d)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(d, axis=-1) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isnan(d), 0.0, d - mean[..., None])
        sd = np.sqrt((dev**2).sum(axis=-1) / np.maximum(n - 1, 1))
        half = sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1))
    half = np.where(n >= 2, half, np.nan)
    return mean, mean - half, mean + half


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family (NaN entries are not members and stay NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out
