"""What a sweep leaves behind: trials.parquet, pareto.parquet, importances.parquet, best_config.yaml, and the closing
text of ``lhas-ray tune``. ``lhas-ray report OUT`` compares the best trials from their own folders."""

from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from lhas_ray.config import ExperimentConfig, dump_config
from lhas_ray.evaluation.definitions import METRICS
from lhas_ray.evaluation.ranking import pareto_mask
from lhas_ray.store import ResultStore
from lhas_ray.tuning.configs import best_config, trial_config
from lhas_ray.tuning.scores import (
    IMMEDIATE,
    OBJECTIVE,
    SCORE,
    STAGES_DONE,
    objective_names,
    training_steps,
    trial_scores,
)
from lhas_ray.tuning.space import SearchSpace
from lhas_ray.tuning.trials import (
    child_uri,
)

log = logging.getLogger("lhas_ray.tuning")


@dataclass
class SweepResult:
    """What a sweep produced: the trials table, the Pareto set and the best trial's row (None if no trial completed)."""

    out: str
    trials: pd.DataFrame
    pareto: pd.DataFrame
    best: pd.Series | None
    config: ExperimentConfig  # as the trials ran it (with the immediate floor the sweep derived, if any)


def _trial_rows(cfg: ExperimentConfig, out: str, grid) -> list[dict]:
    """One row per Tune trial, scored from its run folder (the source of truth), with Tune's error if it failed."""
    rows = []
    for result in grid:
        trial_id = posixpath.basename(str(result.path).rstrip("/"))
        rows.append({"trial_id": trial_id, "params": dict(result.config or {}), "error": result.error})
    return [_score_row(cfg, out, r["trial_id"], r["params"], r["error"]) for r in rows]


def _score_row(cfg: ExperimentConfig, out: str, trial_id: str, params: dict, error) -> dict:
    """The trials.parquet row of one trial."""
    head = trial_id.split("_", 1)[0]
    row: dict = {"trial": trial_id, "trial_number": int(head[1:]) if head[1:].isdigit() else -1}
    row.update({f"param_{k}": v for k, v in sorted(params.items())})
    store = ResultStore(child_uri(out, "trials", trial_id))
    try:
        tcfg = trial_config(cfg, params)
        scores = (
            trial_scores(store, tcfg) if store.is_run() else {OBJECTIVE: math.nan, IMMEDIATE: math.nan, STAGES_DONE: 0}
        )
        steps = training_steps(store, tcfg) if store.is_run() else 0
    except (ValueError, KeyError) as e:
        scores, steps = {OBJECTIVE: math.nan, IMMEDIATE: math.nan, STAGES_DONE: 0}, 0
        error = error or e
    expected = len(cfg.seeds) * len(cfg.stages)
    if error is not None:
        status = "failed"
    elif any(math.isnan(scores.get(k, math.nan)) for k in objective_names(cfg)):
        status = "failed"
        error = "objective is NaN"
    elif scores.get(STAGES_DONE, 0) < expected:
        status = "stopped"
    else:
        status = "completed"
    row.update({OBJECTIVE: scores.get(OBJECTIVE, math.nan), IMMEDIATE: scores.get(IMMEDIATE, math.nan)})
    if cfg.tune.immediate_floor is not None:
        row[SCORE] = scores.get(SCORE, math.nan)
    # the lm-eval metrics exist only where evaluation.lm_eval is on: no column of NaN otherwise
    measured = [m for m in METRICS if cfg.evaluation.lm_eval is not None or not m.startswith("lm_eval_")]
    row.update({m: scores.get(m, math.nan) for m in measured})
    row.update(
        {
            "status": status,
            STAGES_DONE: int(scores.get(STAGES_DONE, 0)),
            "training_steps": int(steps),
            "run": f"trials/{trial_id}",
            "error": "" if error is None else str(error).strip().splitlines()[-1][:500],
        }
    )
    return row


def write_sweep_outputs(cfg: ExperimentConfig, space: SearchSpace, out: str, rows: list[dict]) -> SweepResult:
    """trials.parquet, pareto.parquet, importances.parquet and best_config.yaml (the report reads the trial folders)."""
    store = ResultStore(out)
    trials = pd.DataFrame(rows).sort_values("trial_number", kind="stable").reset_index(drop=True)
    store.write_parquet("trials.parquet", pa.Table.from_pandas(trials, preserve_index=False))
    done = trials[trials["status"] == "completed"]
    front = done[pareto_mask(done[[IMMEDIATE, OBJECTIVE]].to_numpy())] if len(done) else done
    store.write_parquet("pareto.parquet", pa.Table.from_pandas(front.reset_index(drop=True), preserve_index=False))
    imp = [
        pd.DataFrame({"param": s.index, "objective": name, "importance": s.to_numpy()})
        for name in objective_names(cfg)
        if not (s := param_importances(trials, name, seed=cfg.tune.seed)).empty
    ]
    if imp:
        store.write_parquet(
            "importances.parquet", pa.Table.from_pandas(pd.concat(imp, ignore_index=True), preserve_index=False)
        )
    best = None
    if len(done):
        best, why = best_trial(done, front, cfg)
        params = {c.removeprefix("param_"): _plain(best[c]) for c in trials.columns if c.startswith("param_")}
        text = (
            f"# Best trial {best['trial']} of the sweep in {out}: {OBJECTIVE} = {best[OBJECTIVE]:.4f} "
            f"({cfg.tune.objective}), {IMMEDIATE} = {best[IMMEDIATE]:.4f} ({cfg.tune.immediate}).\n"
            + (f"# {why}\n" if why else "")
            + "# Run it with: lhas-ray run best_config.yaml --output OUT\n"
        )
        store.write_bytes("best_config.yaml", (text + dump_config(best_config(cfg, params))).encode())
    return SweepResult(out, trials, front.reset_index(drop=True), best, cfg)


def best_trial(done: pd.DataFrame, front: pd.DataFrame, cfg: ExperimentConfig) -> tuple[pd.Series, str]:
    """The completed trial to confirm, and why when a floor chose it: the highest objective (on the Pareto set when
    multi-objective); with an immediate floor, the highest objective among the trials at or above it, else the trial
    with the highest penalised objective (the one least below it, objectives alike)."""
    floor = cfg.tune.immediate_floor
    if floor is None:
        pool = front if cfg.tune.multi_objective else done
        return pool.loc[pool[OBJECTIVE].idxmax()], ""
    feasible = done[done[IMMEDIATE] >= floor]
    if len(feasible):
        why = f"{len(feasible)} of {len(done)} completed trials kept {IMMEDIATE} >= the floor {floor:.4f}; the best of them"
        return feasible.loc[feasible[OBJECTIVE].idxmax()], why
    log.warning("no completed trial kept %s >= %.4f; the best config is the least penalised trial", IMMEDIATE, floor)
    why = f"no completed trial kept {IMMEDIATE} >= the floor {floor:.4f}: this is the one with the best {SCORE}"
    return done.loc[done[SCORE].idxmax()], why


def _plain(v):
    """A numpy scalar as the Python value YAML writes plainly."""
    return v.item() if hasattr(v, "item") else v


def sweep_summary(result: SweepResult, cfg: ExperimentConfig) -> str:
    """The closing text of ``lhas-ray tune``: counts by status, the best trial, the Pareto set."""
    t = result.trials
    counts = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    lines = [f"{len(t)} trials: {counts} (in-sample: every number below is on the development seeds {cfg.seeds})"]
    scored = [OBJECTIVE, IMMEDIATE] + ([SCORE] if SCORE in t.columns else [])
    cols = ["trial", "status", STAGES_DONE, *scored] + [c for c in t.columns if c.startswith("param_")]
    lines.append(t[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.best is not None:
        lines.append(f"\nbest trial: {result.best['trial']} ({OBJECTIVE} = {result.best[OBJECTIVE]:.4f})")
        if (floor := cfg.tune.immediate_floor) is not None:
            done = t[t["status"] == "completed"]
            lines.append(
                f"immediate floor {floor:.4f}: {int((done[IMMEDIATE] >= floor).sum())} of {len(done)} completed "
                f"trials at or above it; the best trial is the best {OBJECTIVE} among them (if none: the best {SCORE})"
            )
        lines.append(f"best config: {child_uri(result.out, 'best_config.yaml')}")
        lines.append(f"Pareto set ({IMMEDIATE} vs {OBJECTIVE}): {', '.join(result.pareto['trial'])}")
    else:
        lines.append("\nno trial completed: no best config was written")
    lines.append(f"(objective = {cfg.tune.objective}; immediate_score = {cfg.tune.immediate})")
    return "\n".join(lines)


def param_importances(trials: pd.DataFrame, objective: str = "objective", seed: int = 0) -> pd.Series:
    """Optuna (fANOVA) importance of each ``param_*`` column for ``objective`` over finished trials; empty if < 3."""
    import optuna

    params = [c for c in trials.columns if c.startswith("param_")]
    done = trials[np.isfinite(pd.to_numeric(trials.get(objective), errors="coerce").astype(float))]
    if "status" in done:
        done = done[done["status"] == "completed"]
    if len(done) < 3 or not params:
        return pd.Series(dtype=float)
    dists = {}
    for c in params:
        col = done[c]
        if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
            dists[c] = optuna.distributions.CategoricalDistribution(sorted(set(col.tolist()), key=repr))
        elif col.min() == col.max():
            continue
        elif pd.api.types.is_integer_dtype(col):
            dists[c] = optuna.distributions.IntDistribution(int(col.min()), int(col.max()))
        else:
            dists[c] = optuna.distributions.FloatDistribution(float(col.min()), float(col.max()))
    if not dists:
        return pd.Series(dtype=float)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        values = {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in dists}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(row[objective])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series({k.removeprefix("param_"): v for k, v in imp.items()}, dtype=float)
