"""A trial's scores, read back from its run folder: the objective formulas at each seed's latest committed stage
(mean over seeds), the training steps it cost, and the callback that hands them to Tune after every stage."""

from __future__ import annotations

import math

import pandas as pd
from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

from lhas_ray.config import ExperimentConfig
from lhas_ray.evaluation.formulas import parse_formula, stage_scores
from lhas_ray.evaluation.metrics import read_long_tables, run_trajectory
from lhas_ray.store import ResultStore

OBJECTIVE, IMMEDIATE = "objective", "immediate_score"
SCORE = "constrained_objective"  # what ASHA and TPE maximise when the sweep has an immediate floor
STAGES_DONE = "stages_done"
SHORTFALL_PENALTY = 10.0  # objective points lost per point of immediate score below the floor


class NonFiniteObjective(RuntimeError):
    """A trial whose objective came out NaN: Tune marks it failed and the sweep goes on."""


def objective_names(cfg: ExperimentConfig) -> list[str]:
    """The metrics Optuna maximises: the long-horizon objective, and the immediate score when multi-objective; the
    objective less its shortfall penalty when the sweep has an immediate floor."""
    if cfg.tune.immediate_floor is not None:
        return [SCORE]
    return [IMMEDIATE, OBJECTIVE] if cfg.tune.multi_objective else [OBJECTIVE]


def constrained(objective: float, immediate: float, floor: float) -> float:
    """The objective less ``SHORTFALL_PENALTY`` per point of immediate score below ``floor``: a trial under the floor
    ranks below a feasible one unless its objective is ahead by ten times its shortfall."""
    return objective - SHORTFALL_PENALTY * max(0.0, floor - immediate)


def below_floor(objective, score):
    """Whether a trial's immediate score fell below the floor, read off its ``constrained_objective``: only a
    shortfall makes the score smaller than the objective. Scalars or arrays (NaN: not below)."""
    return score < objective


def trial_scores(store: ResultStore, cfg: ExperimentConfig, upto: tuple[int, int] | None = None) -> dict[str, float]:
    """Objectives and metrics at each seed's latest committed stage (mean over seeds), and the stages committed.

    ``upto=(seed, stage)`` scores the trial as it stood when that unit was committed (seeds run in ``cfg.seeds``
    order), so every report, and ASHA's judgement of it, is about the same point of every trial.
    """
    formulas = {OBJECTIVE: parse_formula(cfg.tune.objective), IMMEDIATE: parse_formula(cfg.tune.immediate)}
    empty = {OBJECTIVE: math.nan, IMMEDIATE: math.nan, SCORE: math.nan, STAGES_DONE: 0}
    metrics, curves, _ = read_long_tables(store)
    if metrics is not None and upto is not None:
        metrics, curves = (_as_of(df, cfg, *upto) if df is not None else None for df in (metrics, curves))
    if metrics is None or not (metrics["stage"] > 0).any():
        return empty
    traj = run_trajectory(metrics, curves, cfg)
    if traj.empty:
        return empty
    scores = stage_scores(traj, formulas)
    latest = scores.groupby(level="seed").tail(1)
    out = {k: float(v) for k, v in latest.mean(skipna=False).items()}
    out[STAGES_DONE] = len(scores)
    if cfg.tune.immediate_floor is not None:
        out[SCORE] = constrained(out[OBJECTIVE], out[IMMEDIATE], cfg.tune.immediate_floor)
    return out


def _as_of(df: pd.DataFrame, cfg: ExperimentConfig, seed: int, stage: int) -> pd.DataFrame:
    """Rows of the units committed up to (seed, stage): earlier seeds whole, this seed's stages <= stage."""
    order = {s: i for i, s in enumerate(cfg.seeds)}
    position = df["seed"].map(order)
    return df[(position < order[seed]) | ((df["seed"] == seed) & (df["stage"] <= stage))]


def training_steps(store: ResultStore, cfg: ExperimentConfig) -> int:
    """Optimizer steps of a run's committed stages, training and probes (the warm-up is shared by a sweep's trials)."""
    return sum(
        cfg.training.steps + (cfg.probe.steps if unit.stage < len(cfg.stages) else 0)
        for unit in store.committed_units()
        if unit.stage > 0
    )


class ObjectiveReportCallback(UserCallback):
    """Forwards every committed stage to Tune with the trial's objectives so far, read back from its run folder."""

    def __init__(self, out: str, cfg: ExperimentConfig):
        self.out, self.cfg = out, cfg.model_dump(mode="json")
        self._tune = TuneReportCallback()

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        """Skip stage 0 (nothing to score yet); add the objectives as of this unit to rank 0's report, hand it on."""
        row = dict(metrics[0])
        if int(row.get("stage", 0)) == 0:
            return
        upto = (int(row["seed"]), int(row["stage"]))
        scores = trial_scores(ResultStore(self.out), ExperimentConfig.model_validate(self.cfg), upto=upto)
        self._tune.after_report(run_context, [{**row, **scores}], checkpoint)
