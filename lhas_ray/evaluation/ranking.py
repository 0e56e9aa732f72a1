"""Rank analysis: do the selectors that win now also win later?

Selectors are ranked per metric and stage by their mean over seeds (rank 1 = best; the direction of each metric is
``metrics.HIGHER_IS_BETTER``; ties share the average rank). The immediate ranking (``immediate`` at stage 1) is
compared with each long-horizon ranking, taken at the metric's final stage (the last stage at which every selector
has it: T for most metrics, T-1 for the probe metrics ``lca`` and ``steps_to_threshold``), by Kendall tau-b and the
share of discordant pairs (pairs ordered one way now and the other way later, out of all n(n-1)/2 pairs; tied pairs
are neither concordant nor discordant). Intervals come from a paired percentile bootstrap over seeds: seeds are
resampled with replacement, the same resample for every selector (seed r gives every selector the same data).

Myopia of selector s against the ``random`` baseline, paired by seed: ``now_diff`` = mean(immediate_s -
immediate_random) at stage 1 and ``later_diff`` = mean of the same difference of a long-horizon metric at its final
stage, oriented so that positive means better than random. s is myopic when now_diff > 0 and later_diff < 0,
confidently so when now's interval lies above 0 and later's below 0; ``p_myopic`` is the share of bootstrap
resamples in which both hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from lhas_ray.evaluation.metrics import HIGHER_IS_BETTER, METRICS
from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)

NOW = ("immediate", 1)
PRIMARY_LATER = "acc"
RANKING_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string()),  # rank | tau | myopia | note
        pa.field("metric", pa.string()),
        pa.field("stage", pa.int64()),
        pa.field("selector", pa.string()),
        pa.field("statistic", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("lo", pa.float64()),
        pa.field("hi", pa.float64()),
        pa.field("note", pa.string()),
    ]
)


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
    """The rank analysis of one run: per-metric ranks, rank agreement now-vs-later, and per-selector myopia."""

    ranks: pd.DataFrame  # metric, stage, selector, mean, lo, hi, std, n_seeds, rank, p_best
    tau: pd.DataFrame  # metric, stage, n_selectors, tau_b, tau_lo, tau_hi, discordant, discordant_lo, discordant_hi
    myopia: (
        pd.DataFrame
    )  # selector, metric, stage, now_diff/lo/hi, later_diff/lo/hi, p_myopic, myopic, confident, verdict
    final_stage: dict[str, int]  # metric -> the stage its long-horizon ranking is taken at
    selectors: list[str]
    seeds: list[int]
    baseline: str
    n_boot: int
    ci: float
    notes: list[str] = field(default_factory=list)


def _nanmean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over non-NaN entries (inf allowed); NaN where there are none, without warnings."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def _interval(boot: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the last axis, ignoring NaN resamples."""
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    allnan = np.isnan(boot).all(axis=-1)
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(np.where(allnan[..., None], 0.0, boot), q, axis=-1)
    return np.where(allnan, np.nan, lo), np.where(allnan, np.nan, hi)


def final_stages(trajectory: pd.DataFrame) -> dict[str, int]:
    """For each metric present, the last stage at which every selector has a value."""
    n_sel = trajectory["selector"].nunique()
    per = trajectory.groupby(["metric", "stage"])["selector"].nunique()
    full = per[per == n_sel].reset_index()
    last = full.groupby("metric")["stage"].max()
    return {m: int(last[m]) for m in METRICS if m in last.index}


def rank_analysis(
    trajectory: pd.DataFrame, *, baseline: str = "random", n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> Ranking:
    """Rank selectors per metric, compare the immediate ranking with each long-horizon one, and test for myopia."""
    if trajectory.empty:
        raise ValueError("the trajectory table is empty: nothing to rank")
    if not 0 < ci < 1 or n_boot < 1:
        raise ValueError(f"need 0 < ci < 1 and n_boot >= 1; got ci={ci}, n_boot={n_boot}")
    selectors = sorted(trajectory["selector"].unique().tolist())
    seeds = sorted(int(s) for s in trajectory["seed"].unique())
    metrics = [m for m in METRICS if m in set(trajectory["metric"])]
    n_stage = int(trajectory["stage"].max()) + 1
    notes: list[str] = []

    # A[metric, stage, selector, seed], oriented so that higher is better; NaN where absent.
    A = np.full((len(metrics), n_stage, len(selectors), len(seeds)), np.nan)
    t = trajectory[trajectory["metric"].isin(metrics)]
    mi = t["metric"].map({m: i for i, m in enumerate(metrics)}).to_numpy()
    si = t["selector"].map({s: i for i, s in enumerate(selectors)}).to_numpy()
    ri = t["seed"].map({r: i for i, r in enumerate(seeds)}).to_numpy()
    A[mi, t["stage"].to_numpy(np.int64), si, ri] = t["value"].to_numpy(np.float64)
    sign = np.array([1.0 if HIGHER_IS_BETTER[m] else -1.0 for m in metrics])[:, None, None, None]
    V = A * sign

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    point = _nanmean(V)  # [M, S, sel]
    boot = _nanmean(V[..., idx])  # [M, S, sel, boot]
    if len(seeds) == 1:
        notes.append("1 seed: bootstrap intervals over seeds are degenerate (no seed-to-seed spread was measured)")

    # ranks and the chance of being best
    best_boot = np.where(np.isnan(boot), -np.inf, boot)
    is_best = best_boot == best_boot.max(axis=2, keepdims=True)
    p_best = (is_best / is_best.sum(axis=2, keepdims=True)).mean(axis=-1)
    lo, hi = _interval(boot, ci)
    M, S, N = point.shape
    ranks = pd.DataFrame(
        {
            "metric": np.repeat(metrics, S * N),
            "stage": np.tile(np.repeat(np.arange(S), N), M),
            "selector": np.tile(selectors, M * S),
            "oriented": point.reshape(-1),
            "p_best": p_best.reshape(-1),
            "sign": np.repeat(sign.reshape(-1), S * N),
            "lo_o": lo.reshape(-1),
            "hi_o": hi.reshape(-1),
        }
    )
    ranks = ranks[ranks["oriented"].notna()].copy()
    ranks["mean"] = ranks["oriented"] * ranks["sign"]
    ranks["lo"] = np.where(ranks["sign"] > 0, ranks["lo_o"], -ranks["hi_o"])
    ranks["hi"] = np.where(ranks["sign"] > 0, ranks["hi_o"], -ranks["lo_o"])
    spread = t.groupby(["metric", "stage", "selector"])["value"].agg(std="std", n_seeds="count")
    ranks = ranks.merge(spread.reset_index(), on=["metric", "stage", "selector"], how="left")
    ranks["rank"] = ranks.groupby(["metric", "stage"])["oriented"].rank(ascending=False, method="average")
    ranks = ranks[["metric", "stage", "selector", "mean", "lo", "hi", "std", "n_seeds", "rank", "p_best"]]
    ranks = ranks.astype({"stage": np.int64, "n_seeds": np.int64}).reset_index(drop=True)

    # immediate ranking at stage 1 versus each long-horizon ranking at its final stage
    final = final_stages(trajectory)
    now_m = metrics.index(NOW[0]) if NOW[0] in metrics else None
    tau_rows = []
    if now_m is None or NOW[1] >= n_stage:
        notes.append("no immediate accuracy at stage 1: rank reversal not computed")
    elif len(selectors) < 2:
        notes.append("only one selector: nothing to rank")
    else:
        x, xb = point[now_m, NOW[1]], boot[now_m, NOW[1]]
        for m, stage in final.items():
            if (m, stage) == NOW:
                continue
            y, yb = point[metrics.index(m), stage], boot[metrics.index(m), stage]
            keep = ~np.isnan(x) & ~np.isnan(y)
            tb = kendall_tau_b(xb[keep].T, yb[keep].T)
            db = discordant_share(xb[keep].T, yb[keep].T)
            tlo, thi = _interval(np.asarray(tb), ci)
            dlo, dhi = _interval(np.asarray(db), ci)
            tau_rows.append(
                {
                    "metric": m,
                    "stage": stage,
                    "n_selectors": int(keep.sum()),
                    "tau_b": kendall_tau_b(x[keep], y[keep]),
                    "tau_lo": float(tlo),
                    "tau_hi": float(thi),
                    "discordant": discordant_share(x[keep], y[keep]),
                    "discordant_lo": float(dlo),
                    "discordant_hi": float(dhi),
                }
            )
    tau = pd.DataFrame(
        tau_rows,
        columns=[
            "metric",
            "stage",
            "n_selectors",
            "tau_b",
            "tau_lo",
            "tau_hi",
            "discordant",
            "discordant_lo",
            "discordant_hi",
        ],
    )

    # myopia against the baseline, paired by seed
    myopia_rows = []
    if baseline not in selectors:
        notes.append(
            f"no {baseline!r} selector in this run: the myopia test (better than {baseline} now, worse later) was not run"
        )
    elif now_m is not None and NOW[1] < n_stage:
        b = selectors.index(baseline)
        d_now = V[now_m, NOW[1]] - V[now_m, NOW[1], b]  # [sel, seed]
        now_pt, now_bt = _nanmean(d_now), _nanmean(d_now[:, idx])
        now_lo, now_hi = _interval(now_bt, ci)
        for m, stage in final.items():
            if (m, stage) == NOW:
                continue
            k = metrics.index(m)
            with np.errstate(invalid="ignore"):
                d_later = V[k, stage] - V[k, stage, b]
            later_pt, later_bt = _nanmean(d_later), _nanmean(d_later[:, idx])
            later_lo, later_hi = _interval(later_bt, ci)
            p_myopic = ((now_bt > 0) & (later_bt < 0)).mean(axis=-1)
            for s, name in enumerate(selectors):
                if s == b:
                    continue
                myopic = bool(now_pt[s] > 0 and later_pt[s] < 0)
                confident = bool(myopic and now_lo[s] > 0 and later_hi[s] < 0)
                myopia_rows.append(
                    {
                        "selector": name,
                        "metric": m,
                        "stage": stage,
                        "now_diff": now_pt[s],
                        "now_lo": now_lo[s],
                        "now_hi": now_hi[s],
                        "later_diff": later_pt[s],
                        "later_lo": later_lo[s],
                        "later_hi": later_hi[s],
                        "p_myopic": p_myopic[s],
                        "myopic": myopic,
                        "confident": confident,
                        "verdict": _verdict(now_pt[s], later_pt[s], myopic, confident, baseline),
                    }
                )
    myopia = pd.DataFrame(
        myopia_rows,
        columns=[
            "selector",
            "metric",
            "stage",
            "now_diff",
            "now_lo",
            "now_hi",
            "later_diff",
            "later_lo",
            "later_hi",
            "p_myopic",
            "myopic",
            "confident",
            "verdict",
        ],
    )
    return Ranking(ranks, tau, myopia, final, selectors, seeds, baseline, n_boot, ci, notes)


def _verdict(now: float, later: float, myopic: bool, confident: bool, baseline: str) -> str:
    """One phrase for a selector against the baseline: myopic (sure or not), or how it compares now and later."""
    if confident:
        return f"myopic: better than {baseline} now, worse later (both intervals exclude 0)"
    if myopic:
        return f"possibly myopic: better than {baseline} now, worse later, but an interval includes 0"
    if np.isnan(now) or np.isnan(later):
        return "undefined (missing values)"
    now_w = "better" if now > 0 else "not better"
    later_w = "better" if later > 0 else "not better"
    return f"not myopic: {now_w} than {baseline} now, {later_w} later"


def ranking_table(ranking: Ranking) -> pa.Table:
    """The rank analysis as one long table (kind, metric, stage, selector, statistic, value, lo, hi, note)."""
    rows: list[dict] = []
    for r in ranking.ranks.itertuples(index=False):
        base = {"kind": "rank", "metric": r.metric, "stage": r.stage, "selector": r.selector, "note": None}
        rows.append({**base, "statistic": "mean", "value": r.mean, "lo": r.lo, "hi": r.hi})
        for stat in ("std", "n_seeds", "rank", "p_best"):
            rows.append({**base, "statistic": stat, "value": float(getattr(r, stat)), "lo": None, "hi": None})
    for r in ranking.tau.itertuples(index=False):
        base = {"kind": "tau", "metric": r.metric, "stage": r.stage, "selector": None, "note": None}
        rows.append({**base, "statistic": "tau_b", "value": r.tau_b, "lo": r.tau_lo, "hi": r.tau_hi})
        rows.append(
            {
                **base,
                "statistic": "discordant_share",
                "value": r.discordant,
                "lo": r.discordant_lo,
                "hi": r.discordant_hi,
            }
        )
        rows.append({**base, "statistic": "n_selectors", "value": float(r.n_selectors), "lo": None, "hi": None})
    for r in ranking.myopia.itertuples(index=False):
        base = {"kind": "myopia", "metric": r.metric, "stage": r.stage, "selector": r.selector, "note": r.verdict}
        rows.append({**base, "statistic": "now_diff", "value": r.now_diff, "lo": r.now_lo, "hi": r.now_hi})
        rows.append({**base, "statistic": "later_diff", "value": r.later_diff, "lo": r.later_lo, "hi": r.later_hi})
        rows.append({**base, "statistic": "p_myopic", "value": r.p_myopic, "lo": None, "hi": None})
        rows.append({**base, "statistic": "myopic", "value": float(r.myopic), "lo": None, "hi": None})
        rows.append({**base, "statistic": "confident", "value": float(r.confident), "lo": None, "hi": None})
    for note in ranking.notes:
        rows.append(
            {
                "kind": "note",
                "metric": None,
                "stage": None,
                "selector": None,
                "statistic": "note",
                "value": None,
                "lo": None,
                "hi": None,
                "note": note,
            }
        )
    if not rows:
        return RANKING_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=RANKING_SCHEMA)


def write_ranking(store: ResultStore, ranking: Ranking) -> str:
    """Write the rank analysis to OUT/ranking.parquet; returns its path."""
    path = store.write_parquet("ranking.parquet", ranking_table(ranking))
    logger.info("wrote %s", path)
    return path
