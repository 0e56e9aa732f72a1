"""Rank analysis: do the selectors that win now also win later, and what do the seeds support?

Three steps, each its own function, all from the trajectory table:

- ``rank_boards``: selectors ranked per metric and stage by their mean over seeds (rank 1 = best in the metric's
  direction, ``metrics.HIGHER_IS_BETTER``; ties share the average rank), with the seeds' std and a Student-t
  interval of the mean (two seeds or more).
- ``rank_agreement``: the immediate ranking (``immediate`` at stage 1) against each long-horizon ranking at the
  metric's final stage (the last stage every selector has it: T for most metrics, T-1 for the probe metrics) by
  Kendall tau-b of the mean rankings and the share of discordant pairs (descriptive), and tau-b within each seed:
  its mean, a t-interval (from ``MIN_SEEDS_TAU_INTERVAL`` seeds) and an exact sign-flip test of "mean per-seed
  tau-b = 0", Holm-adjusted over the long-horizon metrics (the family ``reversal``).
- ``baseline_tests``: every selector against each baseline (``random`` by default), paired by seed. Family
  ``difference``: each metric at its final stage (and immediate at stage 1), two-sided exact sign-flip test with a
  t-interval of the mean difference. Family ``myopia``: "better than the baseline now (immediate at stage 1) and
  worse later (a long-horizon metric at its final stage)", an intersection-union test whose p-value is the larger
  of the two one-sided sign-flip p-values; a selector is called myopic only where its Holm-adjusted p < alpha.

One seed is descriptive: no interval, no p-value, no verdict. With n seeds the smallest exact p-value is 1/2^n, so a
family of m claims can reach significance only when 1/2^n <= alpha / m (``Ranking.attainable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lhas_ray.evaluation.baselines import DIFF_COLUMNS, MYOPIA_COLUMNS, baseline_tests, myopia_verdict  # noqa: F401
from lhas_ray.evaluation.cube import (  # noqa: F401  (the shared vocabulary of the rank analysis)
    MIN_SEEDS_TAU_INTERVAL,
    NOW,
    PRIMARY_LATER,
    TEST_NAME,
    Cube,
    build_cube,
    discordant_share,
    final_stages,
    kendall_tau_b,
    pareto_mask,
)
from lhas_ray.evaluation.definitions import COMPANIONS, LONG_HORIZON
from lhas_ray.evaluation.stats import holm, min_attainable_p, sign_flip_pvalue, t_interval

logger = logging.getLogger(__name__)


@dataclass
class Ranking:
    """The rank analysis of one run: ranks per metric, rank agreement now-vs-later, and tests against baselines."""

    ranks: pd.DataFrame  # metric, stage, selector, mean, lo, hi, std, n_seeds, rank
    tau: pd.DataFrame  # metric, stage, n_selectors, tau_b, discordant, seed_tau, seed_tau_lo/hi, n_seeds, p_raw, p_holm
    differences: pd.DataFrame  # baseline, selector, metric, stage, diff, lo, hi, n_seeds, p_raw, p_holm
    myopia: pd.DataFrame  # baseline, selector, metric, stage, now_*, later_*, p_now, p_later, p_raw, p_holm, ...
    final_stage: dict[str, int]  # metric -> the stage its long-horizon ranking is taken at
    selectors: list[str]
    seeds: list[int]
    baselines: list[str]
    alpha: float
    level: float
    families: dict[str, int] = field(default_factory=dict)  # family -> number of claims in it
    notes: list[str] = field(default_factory=list)

    @property
    def descriptive(self) -> bool:
        """One seed: numbers describe this run only; no interval, test or verdict."""
        return len(self.seeds) < 2

    def attainable(self, family: str, alternative: str = "greater") -> bool:
        """Whether the family's first Holm step is reachable with this many seeds: m * (smallest p) < alpha, the
        strict inequality of the decision rule (a claim is made where its Holm-adjusted p < alpha)."""
        m = self.families.get(family, 0)
        return m > 0 and m * min_attainable_p(len(self.seeds), alternative) < self.alpha


def rank_boards(cube: Cube, level: float = 0.95) -> pd.DataFrame:
    """Per metric and stage: each selector's mean over seeds, t-interval, std, seed count and rank (1 = best)."""
    M, S, N, _ = cube.V.shape
    mean, lo, hi = t_interval(cube.V, level)  # oriented
    n = (~np.isnan(cube.V)).sum(axis=-1)
    dev = np.where(np.isnan(cube.V), 0.0, cube.V - np.where(n > 0, mean, 0.0)[..., None])
    std = np.where(n >= 2, np.sqrt((dev**2).sum(axis=-1) / np.maximum(n - 1, 1)), np.nan)
    sign = np.repeat(cube.sign, S * N)
    df = pd.DataFrame(
        {
            "metric": np.repeat(cube.metrics, S * N),
            "stage": np.tile(np.repeat(np.arange(S), N), M),
            "selector": np.tile(cube.selectors, M * S),
            "oriented": mean.reshape(-1),
            "mean": mean.reshape(-1) * sign,
            "lo": np.where(sign > 0, lo.reshape(-1), -hi.reshape(-1)),
            "hi": np.where(sign > 0, hi.reshape(-1), -lo.reshape(-1)),
            "std": std.reshape(-1),
            "n_seeds": n.reshape(-1),
        }
    )
    df = df[df["n_seeds"] > 0].copy()
    # means equal up to floating-point noise (0.3 vs 0.30000000000000004) tie
    df["rank"] = (
        df.assign(o=df["oriented"].round(12)).groupby(["metric", "stage"])["o"].rank(ascending=False, method="average")
    )
    df = df[["metric", "stage", "selector", "mean", "lo", "hi", "std", "n_seeds", "rank"]]
    return df.astype({"stage": np.int64, "n_seeds": np.int64}).reset_index(drop=True)


TAU_COLUMNS = [
    "metric",
    "stage",
    "n_selectors",
    "tau_b",
    "discordant",
    "seed_tau",
    "seed_tau_lo",
    "seed_tau_hi",
    "n_seeds",
    "p_raw",
    "p_holm",
]


def rank_agreement(cube: Cube, final: dict[str, int], level: float = 0.95) -> pd.DataFrame:
    """Immediate ranking at stage 1 against each long-horizon ranking at its final stage (family ``reversal``)."""
    if NOW[0] not in cube.metrics or NOW[1] >= cube.V.shape[1] or len(cube.selectors) < 2:
        return pd.DataFrame(columns=TAU_COLUMNS)
    now = cube.at(*NOW)  # [selector, seed]
    rows = []
    for m, stage in final.items():
        if m not in LONG_HORIZON or m in COMPANIONS:
            continue
        later = cube.at(m, stage)
        keep = ~np.isnan(np.nanmean(now, axis=1)) & ~np.isnan(np.nanmean(later, axis=1))
        x, y = np.nanmean(now[keep], axis=1), np.nanmean(later[keep], axis=1)
        per_seed = np.asarray(kendall_tau_b(now[keep].T, later[keep].T), dtype=np.float64).reshape(-1)  # [seed]
        n = int((~np.isnan(per_seed)).sum())
        mean, lo, hi = t_interval(per_seed, level)
        interval = n >= MIN_SEEDS_TAU_INTERVAL
        rows.append(
            {
                "metric": m,
                "stage": stage,
                "n_selectors": int(keep.sum()),
                "tau_b": kendall_tau_b(x, y),
                "discordant": discordant_share(x, y),
                "seed_tau": float(mean),
                "seed_tau_lo": max(float(lo), -1.0) if interval else np.nan,  # tau-b lives in [-1, 1]
                "seed_tau_hi": min(float(hi), 1.0) if interval else np.nan,
                "n_seeds": n,
                "p_raw": sign_flip_pvalue(per_seed, "two-sided") if n >= 2 else np.nan,
            }
        )
    tau = pd.DataFrame(rows, columns=TAU_COLUMNS[:-1])
    tau["p_holm"] = holm(tau["p_raw"].to_numpy(np.float64)) if len(tau) else []
    return tau[TAU_COLUMNS]


def rank_analysis(
    trajectory: pd.DataFrame,
    *,
    baselines: list[str] | tuple[str, ...] = ("random",),
    alpha: float = 0.05,
    level: float = 0.95,
    myopia_metrics: list[str] | None = None,
) -> Ranking:
    """Rank selectors per metric, compare the immediate ranking with each long-horizon one, test against baselines."""
    if trajectory.empty:
        raise ValueError("the trajectory table is empty: nothing to rank")
    if not 0 < alpha < 1 or not 0 < level < 1:
        raise ValueError(f"need 0 < alpha < 1 and 0 < level < 1; got alpha={alpha}, level={level}")
    cube = build_cube(trajectory)
    final = final_stages(trajectory)
    notes: list[str] = []
    if len(cube.seeds) == 1:
        notes.append("1 seed: every number is descriptive (no seed-to-seed spread was measured); no test was run")
    if NOW[0] not in cube.metrics or NOW[1] >= cube.V.shape[1]:
        notes.append("no immediate accuracy at stage 1: rank reversal and myopia not computed")
    elif len(cube.selectors) < 2:
        notes.append("only one selector: nothing to rank")
    present = [b for b in baselines if b in cube.selectors]
    for b in baselines:
        if b not in cube.selectors:
            notes.append(f"no {b!r} selector in this run: nothing was tested against it")
    tau = rank_agreement(cube, final, level)
    differences, myopia = baseline_tests(cube, final, present, alpha=alpha, level=level, myopia_metrics=myopia_metrics)
    families = {}
    if len(cube.seeds) >= 2:
        families = {k: int(df["p_raw"].notna().sum()) for k, df in (("myopia", myopia), ("difference", differences))}
        families["reversal"] = int(tau["p_raw"].notna().sum())  # Holm's m: the claims with a p-value
    return Ranking(
        rank_boards(cube, level),
        tau,
        differences,
        myopia,
        final,
        cube.selectors,
        cube.seeds,
        present,
        alpha,
        level,
        families,
        notes,
    )
