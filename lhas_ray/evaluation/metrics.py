"""Long-horizon trajectory metrics from the accuracy matrix R[i, j] (accuracy on stage j's eval set after stage i).

Symbols follow DESIGN.md (Metrics). Row 0 of R is the base model; stage t = 1..T. Every metric is reported per
(selector, seed, stage t) and uses only rows 0..t, so "at T" is the last stage's value:

- ``immediate``   R[t, t]
- ``gain``        R[t, t] - R[t-1, t]: what stage t taught (read beside forgetting: a selector that learns nothing
  also forgets nothing)
- ``acc``         mean_{1<=j<=t} R[t, j]; at T this is ACC_T
- ``forgetting``  F_t = mean_{1<=j<t} f_j^t, f_j^t = max_{1<=l<t} R[l, j] - R[t, j] (Chaudhry et al. 2018, as
  DESIGN.md writes it): the best accuracy on stage j at any earlier stage, minus now. Rows l < j count too (what
  stage j's skills had reached through transfer before it was trained); the base model (row 0) does not, since it
  is not a stage of the trajectory. f can be negative when accuracy on an old stage has since risen. Undefined at
  t = 1.
- ``bwt``         mean_{1<=i<t} (R[t, i] - R[i, i]) (GEM, 2017). Undefined at t = 1.
- ``fwt``         mean_{2<=i<=t} (R[i-1, i] - b_i), b_i = R[0, i] the base model (GEM, 2017). Undefined at t = 1.
- ``lca``         mean probe accuracy at the logged probe steps 0..beta (Chaudhry et al. 2019, LCA_beta: the mean
  of Z_b over b = 0..beta); beta = None uses every probe step. The probe from checkpoint t adapts to stage t+1, so
  it is undefined at t = T.
- ``steps_to_threshold``  the first logged probe step whose accuracy is >= threshold; +inf when the probe never
  reaches it (the worst possible value, so a selector that never gets there ranks last); undefined at t = T.
- ``imbalance_range`` / ``imbalance_cv``  max - min and coefficient of variation (population std / mean) of the
  per-skill accuracy after stage t, where a skill's accuracy is the mean over the in-distribution eval sets of
  stages 1..t that contain it. cv is undefined when the mean is 0.
- ``ood_acc``     mean accuracy over the OOD sets after stage t; ``ood_gap`` = acc - ood_acc.

Undefined values are omitted from the long table (no row), never stored as NaN; ``steps_to_threshold`` keeps +inf.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)

# Every trajectory metric, in report order, and whether a higher value is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "immediate": True,
    "gain": True,
    "acc": True,
    "forgetting": False,
    "bwt": True,
    "fwt": True,
    "lca": True,
    "steps_to_threshold": False,
    "imbalance_range": False,
    "imbalance_cv": False,
    "ood_acc": True,
    "ood_gap": False,
}
METRICS: tuple[str, ...] = tuple(HIGHER_IS_BETTER)
MATRIX_METRICS: tuple[str, ...] = ("immediate", "gain", "acc", "forgetting", "bwt", "fwt")
TRAJECTORY_SCHEMA = pa.schema(
    [
        pa.field("selector", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("stage", pa.int64()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
    ]
)
_KEYS = ["selector", "seed", "stage"]


# --- the numpy core: accuracy matrices in, per-stage metrics out -------------------------------------------------
def matrix_metrics(R: np.ndarray) -> dict[str, np.ndarray]:
    """Per-stage metrics of accuracy matrices R[..., i, j] (row 0 = base, column 0 unused); out[m][..., t] is stage t."""
    R = np.asarray(R, dtype=np.float64)
    T = R.shape[-2] - 1 if R.ndim >= 2 else 0
    if T < 1 or R.shape[-1] < T + 1:
        raise ValueError(f"R must have shape [..., T+1, >=T+1] with T >= 1 (row 0 = base model); got {R.shape}")
    lead = R.shape[:-2]
    out = {m: np.full(lead + (T + 1,), np.nan) for m in MATRIX_METRICS}
    # best[..., l, j] = max_{1<=l'<=l} R[l', j]: the best accuracy on stage j at any stage so far (base row excluded).
    rows = np.arange(T + 1)[:, None]
    best = np.maximum.accumulate(np.where(rows >= 1, R[..., : T + 1, :], -np.inf), axis=-2)
    diag = np.diagonal(R[..., : T + 1, : T + 1], axis1=-2, axis2=-1)  # R[i, i]
    fwt_terms = R[..., np.arange(1, T), np.arange(2, T + 1)] - R[..., 0, 2 : T + 1]  # R[i-1, i] - b_i, i = 2..T
    for t in range(1, T + 1):
        out["immediate"][..., t] = R[..., t, t]
        out["gain"][..., t] = R[..., t, t] - R[..., t - 1, t]
        out["acc"][..., t] = R[..., t, 1 : t + 1].mean(axis=-1)
        if t >= 2:
            out["forgetting"][..., t] = (best[..., t - 1, 1:t] - R[..., t, 1:t]).mean(axis=-1)
            out["bwt"][..., t] = (R[..., t, 1:t] - diag[..., 1:t]).mean(axis=-1)
            out["fwt"][..., t] = fwt_terms[..., : t - 1].mean(axis=-1)
    return out


def probe_metrics(steps: np.ndarray, accuracy: np.ndarray, *, lca_beta: int | None = None, threshold: float = 0.5):
    """LCA_beta and steps-to-threshold of one probe learning curve; returns (lca, steps) with steps = inf if never."""
    steps = np.asarray(steps, dtype=np.int64)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    within = steps <= lca_beta if lca_beta is not None else np.ones_like(steps, dtype=bool)
    lca = float(accuracy[within].mean()) if within.any() else float("nan")
    reached = steps[accuracy >= threshold]
    return lca, float(reached.min()) if reached.size else float("inf")


def imbalance(per_skill_accuracy: np.ndarray) -> tuple[float, float]:
    """Spread of per-skill accuracies: (max - min, population std / mean); cv is NaN when the mean is 0."""
    a = np.asarray(per_skill_accuracy, dtype=np.float64)
    mean = a.mean()
    return float(a.max() - a.min()), float(a.std() / mean) if mean > 0 else float("nan")


# --- long tables in, long table out -------------------------------------------------------------------------------
def accuracy_matrices(metrics: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Stack the in-distribution accuracy matrices: (trajectories [selector, seed], R [n, S+1, J+1], NaN where absent)."""
    rows = metrics[
        (metrics["metric"] == "accuracy") & (metrics["skill"] == "all") & metrics["eval_stage"].notna()
    ].copy()
    if rows.empty:
        raise ValueError(
            "metrics has no in-distribution accuracy rows (metric='accuracy', skill='all', eval_stage set)"
        )
    rows["eval_stage"] = rows["eval_stage"].astype(np.int64)
    dup = rows.duplicated(subset=["selector", "seed", "stage", "eval_stage"])
    if dup.any():
        first = rows[dup].iloc[0]
        raise ValueError(
            f"metrics has duplicate accuracy rows, e.g. selector {first['selector']!r} seed {first['seed']} "
            f"stage {first['stage']} eval_stage {first['eval_stage']}"
        )
    traj = rows[["selector", "seed"]].drop_duplicates().sort_values(["selector", "seed"]).reset_index(drop=True)
    index = pd.MultiIndex.from_frame(traj)
    codes = index.get_indexer(pd.MultiIndex.from_frame(rows[["selector", "seed"]]))
    n_stages = int(rows["stage"].max())
    n_cols = max(int(rows["eval_stage"].max()), n_stages)
    R = np.full((len(traj), n_stages + 1, n_cols + 1), np.nan)
    R[codes, rows["stage"].to_numpy(np.int64), rows["eval_stage"].to_numpy(np.int64)] = rows["value"].to_numpy(float)
    traj["seed"] = traj["seed"].astype(np.int64)
    return traj, R


def _long(traj: pd.DataFrame, per_metric: dict[str, np.ndarray]) -> pd.DataFrame:
    """Turn {metric: [n_traj, S+1]} into long rows for stages >= 1."""
    frames = []
    for metric, arr in per_metric.items():
        n, s1 = arr.shape
        frames.append(
            pd.DataFrame(
                {
                    "selector": np.repeat(traj["selector"].to_numpy(), s1 - 1),
                    "seed": np.repeat(traj["seed"].to_numpy(np.int64), s1 - 1),
                    "stage": np.tile(np.arange(1, s1, dtype=np.int64), n),
                    "metric": metric,
                    "value": arr[:, 1:].reshape(-1),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _probe_long(curves: pd.DataFrame | None, lca_beta: int | None, threshold: float) -> pd.DataFrame:
    """lca and steps_to_threshold per (selector, seed, stage >= 1) from the probe learning curves."""
    if curves is None or curves.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    probe = curves[(curves["split"] == "probe") & (curves["metric"] == "accuracy") & (curves["stage"] >= 1)]
    if probe.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    within = probe if lca_beta is None else probe[probe["step"] <= lca_beta]
    lca = within.groupby(_KEYS, as_index=False)["value"].mean().assign(metric="lca")
    keys = probe[_KEYS].drop_duplicates()
    first = probe[probe["value"] >= threshold].groupby(_KEYS, as_index=False)["step"].min()
    stt = keys.merge(first, on=_KEYS, how="left")
    stt = stt.assign(metric="steps_to_threshold", value=stt["step"].astype(float).fillna(np.inf)).drop(columns="step")
    return pd.concat([lca, stt], ignore_index=True)


def _imbalance_long(metrics: pd.DataFrame) -> pd.DataFrame:
    """imbalance_range and imbalance_cv per (selector, seed, stage >= 1) over skills of the eval sets seen so far."""
    rows = metrics[
        (metrics["metric"] == "accuracy")
        & (metrics["skill"] != "all")
        & metrics["eval_stage"].notna()
        & (metrics["stage"] >= 1)
    ]
    rows = rows[rows["eval_stage"] <= rows["stage"]]
    if rows.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    per_skill = rows.groupby([*_KEYS, "skill"], as_index=False)["value"].mean()
    g = per_skill.groupby(_KEYS)["value"]
    stats = g.agg(["max", "min", "mean"]).join(g.std(ddof=0).rename("std")).reset_index()
    rng = stats.assign(metric="imbalance_range", value=stats["max"] - stats["min"])
    cv = stats.assign(metric="imbalance_cv", value=(stats["std"] / stats["mean"]).where(stats["mean"] > 0))
    cols = [*_KEYS, "metric", "value"]
    return pd.concat([rng[cols], cv[cols]], ignore_index=True)


def _ood_long(metrics: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """ood_acc (mean over OOD sets) and ood_gap (acc - ood_acc) per (selector, seed, stage >= 1)."""
    rows = metrics[
        (metrics["metric"] == "accuracy")
        & (metrics["skill"] == "all")
        & metrics["eval_stage"].isna()
        & (metrics["stage"] >= 1)
    ]
    if rows.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    ood = rows.groupby(_KEYS, as_index=False)["value"].mean().assign(metric="ood_acc")
    gap = ood.merge(acc[[*_KEYS, "value"]], on=_KEYS, suffixes=("_ood", ""))
    gap = gap.assign(metric="ood_gap", value=gap["value"] - gap["value_ood"])[[*_KEYS, "metric", "value"]]
    return pd.concat([ood, gap], ignore_index=True)


def trajectory_metrics(
    metrics: pd.DataFrame, curves: pd.DataFrame | None = None, *, lca_beta: int | None = None, threshold: float = 0.5
) -> pd.DataFrame:
    """Every trajectory metric per selector, seed and stage t >= 1, long format (selector, seed, stage, metric, value)."""
    traj, R = accuracy_matrices(metrics)
    core = _long(traj, matrix_metrics(R))
    acc = core[core["metric"] == "acc"].dropna(subset=["value"])
    parts = [core, _probe_long(curves, lca_beta, threshold), _imbalance_long(metrics), _ood_long(metrics, acc)]
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    out = out[out["value"].notna()]
    out = out.astype({"selector": str, "seed": np.int64, "stage": np.int64, "metric": str, "value": np.float64})
    order = out["metric"].map({m: i for i, m in enumerate(METRICS)})
    out = out.assign(_o=order).sort_values(["selector", "seed", "stage", "_o"], kind="stable").drop(columns="_o")
    return out.reset_index(drop=True)


def missing_units(
    metrics: pd.DataFrame,
    *,
    n_stages: int | None = None,
    selectors: list[str] | None = None,
    seeds: list[int] | None = None,
) -> list[str]:
    """What a complete run lacks (selectors, seeds, stages, eval stages), one line each; [] if complete.

    Expected stages, selectors and seeds are those present in any trajectory, plus those given (from the run's config).
    """
    if metrics.empty:
        return ["no metrics rows"]
    problems: list[str] = []
    last = max(int(metrics["stage"].max()), n_stages or 0)
    if last < 1:
        return ["no trained stage (only stage 0, the base model)"]
    all_seeds = sorted({int(s) for s in metrics["seed"].unique()} | set(seeds or []))
    present = metrics.groupby("selector")["seed"].unique()
    for selector in sorted(set(selectors or []) - set(present.index)):
        problems.append(f"selector {selector!r}: no committed stage at all (the config lists it)")
    for selector, sel_seeds in present.items():
        lacking = sorted(set(all_seeds) - {int(s) for s in sel_seeds})
        if lacking:
            problems.append(f"selector {selector!r}: missing seed(s) {lacking}")
    have = metrics.groupby(["selector", "seed"])["stage"].unique()
    for (selector, seed), sel_stages in have.items():
        lacking = sorted(set(range(last + 1)) - {int(s) for s in sel_stages})
        if lacking:
            problems.append(f"selector {selector!r} seed {seed}: missing stage(s) {lacking} of 0..{last}")
    acc = metrics[(metrics["metric"] == "accuracy") & (metrics["skill"] == "all") & metrics["eval_stage"].notna()]
    evals = acc.groupby(["selector", "seed", "stage"])["eval_stage"].unique()
    for (selector, seed), sel_stages in have.items():
        for stage in sorted(int(s) for s in sel_stages):
            got = evals.get((selector, seed, stage))
            lacking = sorted(set(range(1, last + 1)) - ({int(e) for e in got} if got is not None else set()))
            if lacking:
                problems.append(
                    f"selector {selector!r} seed {seed} stage {stage}: no accuracy on eval stage(s) {lacking}"
                )
    return problems


def trajectory_table(trajectory: pd.DataFrame) -> pa.Table:
    """The trajectory DataFrame as a pyarrow table with TRAJECTORY_SCHEMA."""
    return pa.Table.from_pandas(trajectory[TRAJECTORY_SCHEMA.names], schema=TRAJECTORY_SCHEMA, preserve_index=False)


def read_long_tables(store: ResultStore) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]:
    """The committed metrics, curves and timings tables as DataFrames (None where absent)."""
    return tuple(
        t.to_pandas() if t is not None else None for t in map(store.read_table, ("metrics", "curves", "timings"))
    )


def write_trajectory(store: ResultStore, *, lca_beta: int | None = None, threshold: float = 0.5) -> pd.DataFrame:
    """Compute the trajectory metrics of a run and write them to OUT/trajectory.parquet; returns them."""
    metrics, curves, _ = read_long_tables(store)
    if metrics is None:
        raise ValueError(f"{store.uri}: no committed metrics (metrics.parquet is missing or has no committed unit)")
    trajectory = trajectory_metrics(metrics, curves, lca_beta=lca_beta, threshold=threshold)
    store.write_parquet("trajectory.parquet", trajectory_table(trajectory))
    logger.info("wrote %s (%d rows)", store.path("trajectory.parquet"), len(trajectory))
    return trajectory
