"""The sweep's own baseline runs: the config's selectors other than lhas on the development seeds (``OUT/baselines/``),
their scores read back per (selector, seed), the best myopic selector among them, and the immediate floor it sets.
Both the sweep (``tune.immediate_tolerance``) and the held-out confirmation use them."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from lhas_ray.config import ConfigError, ExperimentConfig, config_from_dict
from lhas_ray.evaluation.formulas import parse_formula, stage_scores
from lhas_ray.evaluation.metrics import read_long_tables, run_trajectory
from lhas_ray.store import ResultStore

BASELINES_DIR = "baselines"
OBJECTIVE, IMMEDIATE = "objective", "immediate_score"
Runner = Callable[[ExperimentConfig, str, str | None], object]


def baseline_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The sweep's own baseline runs: the config's selectors other than lhas, on the development seeds and data."""
    raw = cfg.model_dump(mode="json")
    raw["selectors"] = [s for s in raw["selectors"] if s["name"] != "lhas"]
    raw.update({"name": f"{cfg.name}-baselines", "output": None})
    return config_from_dict(raw, source="baseline config")


# --- scores read back from run folders --------------------------------------------------------------------------------
def seed_scores(store: ResultStore, cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per (selector, seed): every trajectory metric and the tune objective/immediate formulas at the seed's
    last committed stage (the same reading a sweep scores its trials with)."""
    metrics, curves, _ = read_long_tables(store)
    if metrics is None:
        raise ValueError(f"{store.uri}: no committed metrics")
    traj = run_trajectory(metrics, curves, cfg)
    formulas = {OBJECTIVE: parse_formula(cfg.tune.objective), IMMEDIATE: parse_formula(cfg.tune.immediate)}
    parts = []
    for selector, g in traj.groupby("selector", sort=True):
        last = stage_scores(g, formulas).groupby(level="seed").tail(1).reset_index()
        parts.append(last.assign(selector=selector))
    return pd.concat(parts, ignore_index=True).set_index(["selector", "seed"]).sort_index()


def best_myopic(scores: pd.DataFrame) -> str | None:
    """The selector with the highest mean immediate score over seeds, random aside (ties: the first by name); None
    when random is the only baseline."""
    means = scores[IMMEDIATE].groupby(level="selector").mean().drop("random", errors="ignore")
    return None if means.empty else str(means.sort_index().idxmax())


def run_baselines(cfg: ExperimentConfig, out: str, address: str | None, runner: Runner) -> pd.DataFrame:
    """Run (or resume) the sweep's own baseline runs into ``OUT/baselines/``; their scores per (selector, seed)."""
    from lhas_ray.tuning.trials import child_uri

    bcfg = baseline_config(cfg)
    base_out = child_uri(out, BASELINES_DIR)
    runner(bcfg, base_out, address)
    return seed_scores(ResultStore(base_out), bcfg)


def with_immediate_floor(cfg: ExperimentConfig, scores: pd.DataFrame) -> tuple[ExperimentConfig, str]:
    """``cfg`` with ``tune.immediate_floor`` = the best myopic selector's mean immediate score over the development
    seeds, less ``tune.immediate_tolerance``; and a sentence saying so."""
    myopic = best_myopic(scores)
    if myopic is None:
        raise ConfigError("tune.immediate_tolerance: the baseline runs hold no selector but random to measure it from")
    reference = float(scores.loc[myopic, IMMEDIATE].mean())
    floor = reference - float(cfg.tune.immediate_tolerance)
    raw = cfg.model_dump(mode="json")
    raw["tune"]["immediate_floor"] = floor
    n = len(scores.loc[myopic])
    text = (
        f"immediate floor {floor:.4f}: {myopic} (best myopic) scored {IMMEDIATE} {reference:.4f} on the {n} "
        f"development seeds, less tune.immediate_tolerance {cfg.tune.immediate_tolerance:g}"
    )
    return config_from_dict(raw, source="sweep config with its immediate floor"), text
