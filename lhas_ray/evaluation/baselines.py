"""Every selector against each baseline, paired by seed: the ``difference`` family (two-sided, each metric at its
final stage) and the ``myopia`` family (better now and worse later, an intersection-union test), Holm-adjusted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lhas_ray.evaluation.cube import NOW, Cube
from lhas_ray.evaluation.definitions import COMPANIONS, LONG_HORIZON
from lhas_ray.evaluation.stats import holm, sign_flip_pvalue, t_interval

DIFF_COLUMNS = ["baseline", "selector", "metric", "stage", "diff", "lo", "hi", "n_seeds", "p_raw", "p_holm"]


MYOPIA_COLUMNS = [
    "baseline",
    "selector",
    "metric",
    "stage",
    "now_diff",
    "now_lo",
    "now_hi",
    "later_diff",
    "later_lo",
    "later_hi",
    "n_seeds",
    "p_now",
    "p_later",
    "p_raw",
    "p_holm",
    "point_myopic",
    "myopic",
]


@dataclass(frozen=True)
class _Pairs:
    """Every other selector against one baseline: oriented, seed-paired differences and long tables of them."""

    cube: Cube
    base: str

    @property
    def b(self) -> int:
        return self.cube.selectors.index(self.base)

    @property
    def others(self) -> np.ndarray:
        return np.array([i for i in range(len(self.cube.selectors)) if i != self.b], dtype=np.int64)

    def diff(self, pairs: list[tuple[str, int]]) -> np.ndarray:
        """Oriented differences [pair, other selector, seed] (positive: better than the baseline)."""
        X = np.stack([self.cube.at(m, s) for m, s in pairs])  # [pair, selector, seed]
        return X[:, self.others] - X[:, self.b : self.b + 1]

    def long(self, pairs: list[tuple[str, int]], values: dict) -> pd.DataFrame:
        """One row per (pair, other selector), pair-major, from arrays shaped [pair, other] (or flat)."""
        names = np.array(self.cube.selectors, dtype=object)[self.others]
        return pd.DataFrame(
            {
                "baseline": self.base,
                "selector": np.tile(names, len(pairs)),
                "metric": np.repeat([m for m, _ in pairs], len(names)),
                "stage": np.repeat([s for _, s in pairs], len(names)).astype(np.int64),
                **{k: np.asarray(v).reshape(-1) for k, v in values.items()},
            }
        )


def _differences(pairs: _Pairs, targets: list[tuple[str, int]], tested: bool, level: float) -> pd.DataFrame:
    """Family ``difference`` against one baseline: t-interval and two-sided sign-flip p per metric and selector."""
    d = pairs.diff(targets)
    mean, lo, hi = t_interval(d, level)
    p = sign_flip_pvalue(d, "two-sided") if tested else np.full(mean.shape, np.nan)
    n = (~np.isnan(d)).sum(axis=-1)
    return pairs.long(targets, {"diff": mean, "lo": lo, "hi": hi, "n_seeds": n, "p_raw": p})


def _myopia_claims(pairs: _Pairs, later: list[tuple[str, int]], tested: bool, level: float) -> pd.DataFrame:
    """Family ``myopia`` against one baseline: better now (one-sided) and worse later (one-sided), the larger p."""
    d_now = pairs.diff([NOW])[0]  # [other, seed]
    now_mean, now_lo, now_hi = t_interval(d_now, level)
    p_now = sign_flip_pvalue(d_now, "greater") if tested else np.full(now_mean.shape, np.nan)
    d = pairs.diff(later)
    mean, lo, hi = t_interval(d, level)
    p_later = sign_flip_pvalue(d, "less") if tested else np.full(mean.shape, np.nan)
    k = len(later)
    return pairs.long(
        later,
        {
            "now_diff": np.tile(now_mean, k),
            "now_lo": np.tile(now_lo, k),
            "now_hi": np.tile(now_hi, k),
            "later_diff": mean,
            "later_lo": lo,
            "later_hi": hi,
            "n_seeds": (~np.isnan(d_now)[None] & ~np.isnan(d)).sum(axis=-1),
            "p_now": np.tile(p_now, k),
            "p_later": p_later,
            # intersection-union: both one-sided claims must hold (NaN where either is untested)
            "p_raw": np.maximum(np.tile(p_now, k), p_later.reshape(-1)),
            "point_myopic": (np.tile(now_mean, k) > 0) & (mean.reshape(-1) < 0),
        },
    )


def _adjusted(diffs: list[pd.DataFrame], claims: list[pd.DataFrame], alpha: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both families, each Holm-adjusted over all its members, with their columns and dtypes even when empty."""
    differences = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame(columns=DIFF_COLUMNS[:-1])
    differences["p_holm"] = holm(differences["p_raw"].to_numpy(np.float64)) if len(differences) else []
    base_cols = [c for c in MYOPIA_COLUMNS if c not in ("p_holm", "myopic")]
    myopia = pd.concat(claims, ignore_index=True) if claims else pd.DataFrame(columns=base_cols)
    myopia["p_holm"] = holm(myopia["p_raw"].to_numpy(np.float64)) if len(myopia) else []
    myopia["myopic"] = (
        (myopia["p_holm"].to_numpy() < alpha) & myopia["point_myopic"].to_numpy(bool) if len(myopia) else []
    )
    if differences.empty:  # built from arrays, non-empty tables already have these dtypes
        differences = differences.astype({"stage": np.int64, "n_seeds": np.int64})
    if myopia.empty:
        myopia = myopia.astype({"stage": np.int64, "n_seeds": np.int64, "myopic": bool, "point_myopic": bool})
    return differences[DIFF_COLUMNS], myopia[MYOPIA_COLUMNS]


def baseline_tests(
    cube: Cube,
    final: dict[str, int],
    baselines: list[str],
    *,
    alpha: float = 0.05,
    level: float = 0.95,
    myopia_metrics: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired differences against each baseline (family ``difference``) and the myopia claims (family ``myopia``).

    Differences are oriented (positive = better than the baseline, whatever the metric's direction) and tested only
    with two seeds or more; both families are Holm-adjusted over all their members. Vectorised over metrics and
    selectors: one batched test per baseline and family.
    """
    tested = len(cube.seeds) >= 2
    targets = [(m, s) for m, s in final.items() if m not in COMPANIONS]
    has_now = NOW[0] in cube.metrics and NOW[1] < cube.V.shape[1]
    if has_now and NOW not in targets:
        targets.insert(0, NOW)
    allowed = set(myopia_metrics) if myopia_metrics is not None else set(LONG_HORIZON)
    later = [(m, s) for m, s in final.items() if m in allowed and m not in COMPANIONS and m in LONG_HORIZON]
    diffs, claims = [], []
    for base in baselines:
        if base not in cube.selectors:
            continue
        pairs = _Pairs(cube, base)
        if targets:
            diffs.append(_differences(pairs, targets, tested, level))
        if has_now and later:
            claims.append(_myopia_claims(pairs, later, tested, level))
    return _adjusted(diffs, claims, alpha)


NOT_MYOPIC = "not myopic: not both better now and worse later"  # "not better now and worse later" read as two claims


def myopia_verdict(row, alpha: float) -> str:
    """One phrase for a myopia claim: significant after Holm, or what the point estimates say."""
    if np.isnan(row.p_holm):
        return "point estimates only (one seed: not tested)" if row.point_myopic else NOT_MYOPIC
    if row.myopic:
        return f"myopic: better than {row.baseline} now, worse later (Holm-adjusted p = {row.p_holm:.3g} < {alpha:g})"
    if row.point_myopic:
        return f"better now and worse later by point estimate, not significant (Holm-adjusted p = {row.p_holm:.3g})"
    return NOT_MYOPIC
