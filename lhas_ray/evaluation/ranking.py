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
import pyarrow as pa

from lhas_ray import schemas
from lhas_ray.evaluation.metrics import COMPANIONS, HIGHER_IS_BETTER, LONG_HORIZON, METRICS
from lhas_ray.evaluation.stats import holm, min_attainable_p, sign_flip_pvalue, t_interval
from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)

NOW = ("immediate", 1)
PRIMARY_LATER = "acc"
MIN_SEEDS_TAU_INTERVAL = 5
TEST_NAME = "exact paired sign-flip permutation test over seeds"
RANKING_SCHEMA = schemas.RANKING


# --- Kendall tau-b, vectorised over leading axes ------------------------------------------------------------------
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


# --- the analysis -------------------------------------------------------------------------------------------------
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


def final_stages(trajectory: pd.DataFrame) -> dict[str, int]:
    """For each metric present, the last stage at which every selector has a value."""
    n_sel = trajectory["selector"].nunique()
    per = trajectory.groupby(["metric", "stage"])["selector"].nunique()
    full = per[per == n_sel].reset_index()
    last = full.groupby("metric")["stage"].max()
    return {m: int(last[m]) for m in METRICS if m in last.index}


@dataclass
class _Cube:
    """V[metric, stage, selector, seed]: the trajectory oriented so that higher is better, NaN where absent."""

    V: np.ndarray
    metrics: list[str]
    selectors: list[str]
    seeds: list[int]
    sign: np.ndarray  # [metric]: +1 higher is better, -1 lower is better

    def at(self, metric: str, stage: int) -> np.ndarray:
        return self.V[self.metrics.index(metric), stage]  # [selector, seed]


def _cube(trajectory: pd.DataFrame) -> _Cube:
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
    return _Cube(A * sign[:, None, None, None], metrics, selectors, seeds, sign)


def rank_boards(cube: _Cube, level: float = 0.95) -> pd.DataFrame:
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


def rank_agreement(cube: _Cube, final: dict[str, int], level: float = 0.95) -> pd.DataFrame:
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


def baseline_tests(
    cube: _Cube,
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
        b = cube.selectors.index(base)
        others = np.array([i for i in range(len(cube.selectors)) if i != b], dtype=np.int64)
        names = np.array(cube.selectors, dtype=object)[others]

        def paired(pairs: list[tuple[str, int]], b: int = b, others: np.ndarray = others) -> np.ndarray:
            X = np.stack([cube.at(m, s) for m, s in pairs])  # [pair, selector, seed]
            return X[:, others] - X[:, b : b + 1]  # oriented differences [pair, other, seed]

        def long(pairs, values: dict, base: str = base, names: np.ndarray = names) -> pd.DataFrame:
            """One row per (pair, other selector), pair-major, from arrays shaped [pair, other] (or flat)."""
            return pd.DataFrame(
                {
                    "baseline": base,
                    "selector": np.tile(names, len(pairs)),
                    "metric": np.repeat([m for m, _ in pairs], len(names)),
                    "stage": np.repeat([s for _, s in pairs], len(names)).astype(np.int64),
                    **{k: np.asarray(v).reshape(-1) for k, v in values.items()},
                }
            )

        if targets:
            d = paired(targets)
            mean, lo, hi = t_interval(d, level)
            p = sign_flip_pvalue(d, "two-sided") if tested else np.full(mean.shape, np.nan)
            n = (~np.isnan(d)).sum(axis=-1)
            diffs.append(long(targets, {"diff": mean, "lo": lo, "hi": hi, "n_seeds": n, "p_raw": p}))
        if not has_now or not later:
            continue
        d_now = paired([NOW])[0]  # [other, seed]
        now_mean, now_lo, now_hi = t_interval(d_now, level)
        p_now = sign_flip_pvalue(d_now, "greater") if tested else np.full(now_mean.shape, np.nan)
        d = paired(later)
        mean, lo, hi = t_interval(d, level)
        p_later = sign_flip_pvalue(d, "less") if tested else np.full(mean.shape, np.nan)
        k = len(later)
        claims.append(
            long(
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
        )
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
    cube = _cube(trajectory)
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


def myopia_verdict(row, alpha: float) -> str:
    """One phrase for a myopia claim: significant after Holm, or what the point estimates say."""
    if np.isnan(row.p_holm):
        return "point estimates only (one seed: not tested)" if row.point_myopic else "not better now and worse later"
    if row.myopic:
        return f"myopic: better than {row.baseline} now, worse later (Holm-adjusted p = {row.p_holm:.3g} < {alpha:g})"
    if row.point_myopic:
        return f"better now and worse later by point estimate, not significant (Holm-adjusted p = {row.p_holm:.3g})"
    return "not better now and worse later"


def ranking_table(ranking: Ranking) -> pa.Table:
    """The rank analysis as one long table (kind, metric, stage, selector, baseline, statistic, value, lo, hi, note)."""
    rows: list[dict] = []

    def add(
        kind,
        metric=None,
        stage=None,
        selector=None,
        baseline=None,
        statistic="",
        value=None,
        lo=None,
        hi=None,
        note=None,
    ):
        rows.append(
            {
                "kind": kind,
                "metric": metric,
                "stage": None if stage is None else int(stage),
                "selector": selector,
                "baseline": baseline,
                "statistic": statistic,
                "value": None if value is None else float(value),
                "lo": None if lo is None or np.isnan(lo) else float(lo),
                "hi": None if hi is None or np.isnan(hi) else float(hi),
                "note": note,
            }
        )

    for r in ranking.ranks.itertuples(index=False):
        add("rank", r.metric, r.stage, r.selector, statistic="mean", value=r.mean, lo=r.lo, hi=r.hi, note="t-interval")
        for stat in ("std", "n_seeds", "rank"):
            add("rank", r.metric, r.stage, r.selector, statistic=stat, value=getattr(r, stat))
    for r in ranking.tau.itertuples(index=False):
        add("tau", r.metric, r.stage, statistic="tau_b_of_means", value=r.tau_b, note="descriptive")
        add("tau", r.metric, r.stage, statistic="discordant_share", value=r.discordant, note="descriptive")
        add("tau", r.metric, r.stage, statistic="n_selectors", value=r.n_selectors)
        add("tau", r.metric, r.stage, statistic="mean_seed_tau_b", value=r.seed_tau, lo=r.seed_tau_lo, hi=r.seed_tau_hi)
        add("tau", r.metric, r.stage, statistic="p_value_raw", value=r.p_raw, note=TEST_NAME + ", two-sided")
        add("tau", r.metric, r.stage, statistic="p_value_holm", value=r.p_holm, note="family reversal")
    for r in ranking.differences.itertuples(index=False):
        key = dict(metric=r.metric, stage=r.stage, selector=r.selector, baseline=r.baseline)
        add(
            "difference",
            **key,
            statistic="mean_diff",
            value=r.diff,
            lo=r.lo,
            hi=r.hi,
            note="oriented: + = better; t-interval",
        )
        add("difference", **key, statistic="n_seeds", value=r.n_seeds)
        add("difference", **key, statistic="p_value_raw", value=r.p_raw, note=TEST_NAME + ", two-sided")
        add("difference", **key, statistic="p_value_holm", value=r.p_holm, note="family difference")
    for r in ranking.myopia.itertuples(index=False):
        key = dict(metric=r.metric, stage=r.stage, selector=r.selector, baseline=r.baseline)
        verdict = myopia_verdict(r, ranking.alpha)
        add(
            "myopia",
            **key,
            statistic="now_diff",
            value=r.now_diff,
            lo=r.now_lo,
            hi=r.now_hi,
            note="immediate@1, t-interval",
        )
        add(
            "myopia", **key, statistic="later_diff", value=r.later_diff, lo=r.later_lo, hi=r.later_hi, note="t-interval"
        )
        add("myopia", **key, statistic="p_value_now", value=r.p_now, note=TEST_NAME + ", one-sided (better now)")
        add("myopia", **key, statistic="p_value_later", value=r.p_later, note=TEST_NAME + ", one-sided (worse later)")
        add("myopia", **key, statistic="p_value_raw", value=r.p_raw, note="intersection-union: max of the two")
        add("myopia", **key, statistic="p_value_holm", value=r.p_holm, note="family myopia")
        add("myopia", **key, statistic="myopic", value=float(r.myopic), note=verdict)
    for fam, m in ranking.families.items():
        add("family", metric=fam, statistic="size", value=m, note=f"Holm-Bonferroni at alpha {ranking.alpha:g}")
    for note in ranking.notes:
        add("note", statistic="note", note=note)
    if not rows:
        return RANKING_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=RANKING_SCHEMA)


def write_ranking(store: ResultStore, ranking: Ranking) -> str:
    """Write the rank analysis to OUT/ranking.parquet; returns its path."""
    path = store.write_parquet("ranking.parquet", ranking_table(ranking))
    logger.info("wrote %s", path)
    return path


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` [n, k] that no other row beats on every column (all maximised); NaN rows are never on it."""
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v).any(axis=1)
    ge = (v[None, :, :] >= v[:, None, :]).all(axis=2)
    gt = (v[None, :, :] > v[:, None, :]).any(axis=2)
    dominated = (ge & gt & ok[None, :]).any(axis=1)
    return ok & ~dominated
