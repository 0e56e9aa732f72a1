"""The trajectory as a cube V[metric, stage, selector, seed], oriented so higher is better, and the rank
statistics every step of the rank analysis shares: Kendall tau-b, discordant pairs, Pareto sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lhas_ray.evaluation.definitions import HIGHER_IS_BETTER, METRICS

NOW = ("immediate", 1)


PRIMARY_LATER = "acc"


MIN_SEEDS_TAU_INTERVAL = 5


TEST_NAME = "exact paired sign-flip permutation test over seeds"


def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) for every pair i < j along the last axis (ties, including inf == inf, give 0)."""
    i, j = np.triu_indices(x.shape[-1], 1)
    return (x[..., i] > x[..., j]).astype(np.int8) - (x[..., i] < x[..., j]).astype(np.int8)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Kendall tau-b between x and y along the last axis (batched); NaN where undefined (a constant side, any NaN)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sx, sy = _pair_signs(x), _pair_signs(y)
    num = (sx.astype(np.int64) * sy).sum(axis=-1)
    den = np.sqrt((sx != 0).sum(axis=-1).astype(np.float64) * (sy != 0).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    tau = np.where(np.isnan(x).any(axis=-1) | np.isnan(y).any(axis=-1), np.nan, tau)
    return float(tau) if tau.ndim == 0 else tau


def discordant_share(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Share of all n(n-1)/2 pairs ordered one way by x and the other way by y (batched over leading axes)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.shape[-1]
    if n < 2:
        return np.full(x.shape[:-1], np.nan) if x.ndim > 1 else float("nan")
    share = ((_pair_signs(x).astype(np.int64) * _pair_signs(y)) < 0).sum(axis=-1) / (n * (n - 1) / 2)
    share = np.where(np.isnan(x).any(axis=-1) | np.isnan(y).any(axis=-1), np.nan, share)
    return float(share) if share.ndim == 0 else share


def final_stages(trajectory: pd.DataFrame) -> dict[str, int]:
    """For each metric present, the last stage at which every selector has a value."""
    n_sel = trajectory["selector"].nunique()
    per = trajectory.groupby(["metric", "stage"])["selector"].nunique()
    full = per[per == n_sel].reset_index()
    last = full.groupby("metric")["stage"].max()
    return {m: int(last[m]) for m in METRICS if m in last.index}


@dataclass
class Cube:
    """V[metric, stage, selector, seed]: the trajectory oriented so that higher is better, NaN where absent."""

    V: np.ndarray
    metrics: list[str]
    selectors: list[str]
    seeds: list[int]
    sign: np.ndarray  # [metric]: +1 higher is better, -1 lower is better

    def at(self, metric: str, stage: int) -> np.ndarray:
        return self.V[self.metrics.index(metric), stage]  # [selector, seed]


def build_cube(trajectory: pd.DataFrame) -> Cube:
    selectors = sorted(trajectory["selector"].unique().tolist())
    seeds = sorted(int(s) for s in trajectory["seed"].unique())
    metrics = [m for m in METRICS if m in set(trajectory["metric"])]
    n_stage = int(trajectory["stage"].max()) + 1
    A = np.full((len(metrics), n_stage, len(selectors), len(seeds)), np.nan)
    t = trajectory[trajectory["metric"].isin(metrics)]
    mi = t["metric"].map({m: i for i, m in enumerate(metrics)}).to_numpy()
    si = t["selector"].map({s: i for i, s in enumerate(selectors)}).to_numpy()
    ri = t["seed"].map({r: i for i, r in enumerate(seeds)}).to_numpy()
    A[mi, t["stage"].to_numpy(np.int64), si, ri] = t["value"].to_numpy(np.float64)
    if np.isinf(A).any():
        raise ValueError("the trajectory table holds inf values; censor them before ranking (metrics.py does)")
    sign = np.array([1.0 if HIGHER_IS_BETTER[m] else -1.0 for m in metrics])
    return Cube(A * sign[:, None, None, None], metrics, selectors, seeds, sign)


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` [n, k] that no other row beats on every column (all maximised); NaN rows are never on it."""
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v).any(axis=1)
    ge = (v[None, :, :] >= v[:, None, :]).all(axis=2)
    gt = (v[None, :, :] > v[:, None, :]).any(axis=2)
    dominated = (ge & gt & ok[None, :]).any(axis=1)
    return ok & ~dominated
