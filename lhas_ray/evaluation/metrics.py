"""Long-horizon trajectory metrics from the accuracy matrix R[i, j] (accuracy on stage j's eval set after stage i).

Symbols follow DESIGN.md (Metrics). Row 0 of R is the base model; stage t = 1..T. Every metric is reported per
(selector, seed, stage t) and uses only rows 0..t, so "at T" is the last stage's value. ``DEFINITIONS`` is the one
table of what each metric means and which way is better (``definitions.py``): the report prints its text, the
ranking reads its directions. Undefined values are omitted from the long table (no row), never stored as NaN or inf.

Which rows of ``metrics`` feed what: in-distribution eval sets have ``eval_stage`` set (R); OOD sets are named
``ood/stage<t>-<kind>`` and belong to stage t; the ``general`` set spans every skill of the suite, targeted or not;
``lm_eval/<task>`` sets are lm-evaluation-harness tasks (general ability, compared with the base model's).
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from lhas_ray import schemas
from lhas_ray.evaluation.definitions import FORGETTING_TEXT, LM_EVAL_PREFIX, MATRIX_METRICS, METRICS

if TYPE_CHECKING:
    from lhas_ray.config import ExperimentConfig
from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)


TRAJECTORY_SCHEMA = schemas.TRAJECTORY
_KEYS = ["selector", "seed", "stage"]
GENERAL_SET = "general"  # the eval set over every skill of the suite


# --- the numpy core: accuracy matrices in, per-stage metrics out -------------------------------------------------
def matrix_metrics(R: np.ndarray, forgetting: str = "since_trained") -> dict[str, np.ndarray]:
    """Per-stage metrics of accuracy matrices R[..., i, j] (row 0 = base, column 0 unused); out[m][..., t] is stage t.

    ``forgetting``: 'since_trained' takes the best of R[l, j] over j <= l < t, 'any_earlier' over 1 <= l < t.
    """
    if forgetting not in FORGETTING_TEXT:
        raise ValueError(f"forgetting must be one of {list(FORGETTING_TEXT)}, got {forgetting!r}")
    R = np.asarray(R, dtype=np.float64)
    T = R.shape[-2] - 1 if R.ndim >= 2 else 0
    if T < 1 or R.shape[-1] < T + 1:
        raise ValueError(f"R must have shape [..., T+1, >=T+1] with T >= 1 (row 0 = base model); got {R.shape}")
    lead = R.shape[:-2]
    out = {m: np.full(lead + (T + 1,), np.nan) for m in MATRIX_METRICS}
    # best[..., l, j] = max over the allowed l' <= l of R[l', j]: rows l' >= j (since stage j was trained), or every
    # row l' >= 1 (the base row is not a stage of the trajectory); other rows are masked out.
    rows, cols = np.arange(T + 1)[:, None], np.arange(R.shape[-1])[None, :]
    allowed = (rows >= cols) if forgetting == "since_trained" else np.broadcast_to(rows >= 1, (T + 1, R.shape[-1]))
    best = np.maximum.accumulate(np.where(allowed & (rows >= 1), R[..., : T + 1, :], -np.inf), axis=-2)
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


def probe_metrics(
    steps: np.ndarray, accuracy: np.ndarray, *, lca_beta: int | None = None, threshold: float = 0.5, censor_at=np.inf
):
    """LCA_beta and steps-to-threshold of one probe learning curve; steps = censor_at when it is never reached."""
    steps = np.asarray(steps, dtype=np.int64)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    within = steps <= lca_beta if lca_beta is not None else np.ones_like(steps, dtype=bool)
    lca = float(accuracy[within].mean()) if within.any() else float("nan")
    reached = steps[accuracy >= threshold]
    return lca, float(reached.min()) if reached.size else float(censor_at)


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


def mean_accuracy_matrices(metrics: pd.DataFrame) -> dict[str, np.ndarray]:
    """The accuracy matrix R[i, j] of each selector, mean over the seeds that have it (row 0 = base, column 0
    unused, NaN where no seed has a value)."""
    traj, R = accuracy_matrices(metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (column 0, stages not run yet) stay NaN
        return {s: np.nanmean(R[(traj["selector"] == s).to_numpy()], axis=0) for s in sorted(traj["selector"].unique())}


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


def _probe_long(
    curves: pd.DataFrame | None, lca_beta: int | None, threshold: float, censor_at: float | None
) -> pd.DataFrame:
    """lca, steps_to_threshold (censored) and reached_threshold per (selector, seed, stage >= 1) from probe curves."""
    if curves is None or curves.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    probe = curves[(curves["split"] == "probe") & (curves["metric"] == "accuracy") & (curves["stage"] >= 1)]
    if probe.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    censor = float(probe["step"].max() + 1 if censor_at is None else censor_at)
    within = probe if lca_beta is None else probe[probe["step"] <= lca_beta]
    lca = within.groupby(_KEYS, as_index=False)["value"].mean().assign(metric="lca")
    keys = probe[_KEYS].drop_duplicates()
    first = probe[probe["value"] >= threshold].groupby(_KEYS, as_index=False)["step"].min()
    stt = keys.merge(first, on=_KEYS, how="left")
    reached = stt.assign(metric="reached_threshold", value=stt["step"].notna().astype(float)).drop(columns="step")
    stt = stt.assign(metric="steps_to_threshold", value=stt["step"].astype(float).fillna(censor)).drop(columns="step")
    return pd.concat([lca, stt, reached], ignore_index=True)


def _general_skills(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-skill accuracy on the general set (every skill of the suite), per (selector, seed, stage >= 0)."""
    return metrics[
        (metrics["eval_set"] == GENERAL_SET) & (metrics["metric"] == "accuracy") & (metrics["skill"] != "all")
    ]


def _imbalance_long(metrics: pd.DataFrame) -> pd.DataFrame:
    """imbalance_range and imbalance_cv per (selector, seed, stage >= 1) over every skill of the general set.

    A run without a general set (written before it existed, or ``general_size: 0``) falls back to the skills of
    the in-distribution eval sets of stages 1..t.
    """
    per_skill = _general_skills(metrics)
    per_skill = per_skill[per_skill["stage"] >= 1]
    if per_skill.empty:
        rows = metrics[
            (metrics["metric"] == "accuracy")
            & (metrics["skill"] != "all")
            & metrics["eval_stage"].notna()
            & (metrics["stage"] >= 1)
        ]
        per_skill = rows[rows["eval_stage"] <= rows["stage"]]
    if per_skill.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    per_skill = per_skill.groupby([*_KEYS, "skill"], as_index=False)["value"].mean()
    g = per_skill.groupby(_KEYS)["value"]
    stats = g.agg(["max", "min", "mean"]).join(g.std(ddof=0).rename("std")).reset_index()
    rng = stats.assign(metric="imbalance_range", value=stats["max"] - stats["min"])
    cv = stats.assign(metric="imbalance_cv", value=(stats["std"] / stats["mean"]).where(stats["mean"] > 0))
    cols = [*_KEYS, "metric", "value"]
    return pd.concat([rng[cols], cv[cols]], ignore_index=True)


def untargeted_skills(metrics: pd.DataFrame) -> list[str]:
    """Skills of the general set that no stage's eval set holds: the skills the run never targets."""
    general = set(_general_skills(metrics)["skill"])
    targeted = set(metrics[metrics["eval_stage"].notna() & (metrics["skill"] != "all")]["skill"])
    return sorted(general - targeted)


def _retention_long(metrics: pd.DataFrame) -> pd.DataFrame:
    """untrained_retention per (selector, seed, stage >= 1): general accuracy on never-targeted skills / the base's."""
    skills = untargeted_skills(metrics)
    rows = _general_skills(metrics)
    rows = rows[rows["skill"].isin(skills)]
    if rows.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    mean = rows.groupby(_KEYS, as_index=False)["value"].mean()
    base = mean[mean["stage"] == 0][["selector", "seed", "value"]].rename(columns={"value": "base"})
    out = mean[mean["stage"] >= 1].merge(base, on=["selector", "seed"])
    out = out.assign(metric="untrained_retention", value=(out["value"] / out["base"]).where(out["base"] > 0))
    return out[[*_KEYS, "metric", "value"]]


_OOD_NAME = re.compile(r"^ood/stage(\d+)-")


def _ood_long(metrics: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """ood_acc (mean over the OOD sets of stages <= t) and ood_gap (acc - ood_acc) per (selector, seed, stage >= 1)."""
    rows = metrics[
        (metrics["metric"] == "accuracy")
        & (metrics["skill"] == "all")
        & metrics["eval_set"].str.startswith("ood/")
        & (metrics["stage"] >= 1)
    ]
    own = pd.to_numeric(rows["eval_set"].str.extract(_OOD_NAME, expand=False), errors="coerce")
    if own.isna().any():
        bad = rows.loc[own.isna(), "eval_set"].iloc[0]
        raise ValueError(f"OOD eval set {bad!r} does not name its stage (expected 'ood/stage<t>-<kind>')")
    rows = rows[own <= rows["stage"]]
    if rows.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    ood = rows.groupby(_KEYS, as_index=False)["value"].mean().assign(metric="ood_acc")
    gap = ood.merge(acc[[*_KEYS, "value"]], on=_KEYS, suffixes=("_ood", ""))
    gap = gap.assign(metric="ood_gap", value=gap["value"] - gap["value_ood"])[[*_KEYS, "metric", "value"]]
    return pd.concat([ood, gap], ignore_index=True)


def _lm_eval_long(metrics: pd.DataFrame) -> pd.DataFrame:
    """lm_eval_acc (mean accuracy over the lm-eval tasks) and lm_eval_delta (mean of each task's accuracy minus the
    base model's) per (selector, seed, stage >= 1): general ability, from the ``lm_eval/<task>`` eval sets."""
    rows = metrics[
        (metrics["metric"] == "accuracy")
        & (metrics["skill"] == "all")
        & metrics["eval_set"].str.startswith(LM_EVAL_PREFIX)
    ]
    now = rows[rows["stage"] >= 1]
    if now.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "value"])
    acc = now.groupby(_KEYS, as_index=False)["value"].mean().assign(metric="lm_eval_acc")
    base = rows[rows["stage"] == 0][["selector", "seed", "eval_set", "value"]].rename(columns={"value": "base"})
    diff = now.merge(base, on=["selector", "seed", "eval_set"])
    delta = diff.assign(value=diff["value"] - diff["base"]).groupby(_KEYS, as_index=False)["value"].mean()
    return pd.concat([acc, delta.assign(metric="lm_eval_delta")], ignore_index=True)[[*_KEYS, "metric", "value"]]


def trajectory_metrics(
    metrics: pd.DataFrame,
    curves: pd.DataFrame | None = None,
    *,
    lca_beta: int | None = None,
    threshold: float = 0.5,
    censor_at: float | None = None,
    forgetting: str = "since_trained",
) -> pd.DataFrame:
    """Every trajectory metric per selector, seed and stage t >= 1, long format (selector, seed, stage, metric, value).

    ``censor_at`` is the value of steps_to_threshold for a probe that never reaches the threshold (probe steps + 1;
    None: the last logged probe step + 1).
    """
    traj, R = accuracy_matrices(metrics)
    core = _long(traj, matrix_metrics(R, forgetting))
    acc = core[core["metric"] == "acc"].dropna(subset=["value"])
    parts = [
        core,
        _probe_long(curves, lca_beta, threshold, censor_at),
        _imbalance_long(metrics),
        _retention_long(metrics),
        _ood_long(metrics, acc),
        _lm_eval_long(metrics),
    ]
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    out = out[np.isfinite(out["value"].astype(float))]
    out = out.astype({"selector": str, "seed": np.int64, "stage": np.int64, "metric": str, "value": np.float64})
    order = out["metric"].map({m: i for i, m in enumerate(METRICS)})
    out = out.assign(_o=order).sort_values(["selector", "seed", "stage", "_o"], kind="stable").drop(columns="_o")
    return out.reset_index(drop=True)


def run_trajectory(metrics: pd.DataFrame, curves: pd.DataFrame | None, cfg: ExperimentConfig) -> pd.DataFrame:
    """The trajectory metrics of a run's long tables, read with its config's evaluation settings."""
    ev = cfg.evaluation
    return trajectory_metrics(
        metrics,
        curves,
        lca_beta=ev.lca_beta,
        threshold=ev.probe_threshold,
        censor_at=cfg.probe.steps + 1,
        forgetting=ev.forgetting,
    )


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
