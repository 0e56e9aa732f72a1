"""Read and validate a run folder for its report: the committed tables, the settings its config states, and
whether its numbers are in-sample or held-out. Refuses a folder that is not a complete run, naming what is missing.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field

import pandas as pd
import yaml
from pydantic import BaseModel, ValidationError

from lhas_ray.config import DataConfig, EvaluationConfig, ProbeConfig, SelectorConfig, TuningConfig
from lhas_ray.evaluation.composition import read_selections
from lhas_ray.evaluation.metrics import (
    missing_units,
    read_long_tables,
)
from lhas_ray.store import ResultStore
from lhas_ray.tuning.confirm import CONFIRMATION, HELDOUT, IN_SAMPLE

logger = logging.getLogger("lhas_ray.report")


_MAX_PROBLEMS = 20


@dataclass
class Settings:
    """What the report needs from the run's config beyond the tables (defaults for folders that predate a field)."""

    baselines: list[str]
    forgetting: str
    censor_at: float | None
    resample: str
    data_seed: int | None
    alpha: float = 0.05
    myopia_metrics: list[str] | None = None


@dataclass
class RunInputs:
    """The validated inputs of a report."""

    out: str
    metrics: pd.DataFrame
    curves: pd.DataFrame | None
    timings: pd.DataFrame | None
    trials: pd.DataFrame | None
    lca_beta: int | None
    threshold: float
    settings: Settings
    pool_leaks: pd.DataFrame | None = None
    terms: pd.DataFrame | None = None
    confirmation: pd.DataFrame | None = None  # OUT/confirmation.parquet of a confirmed sweep
    sample: str | None = None  # "held-out" or "in-sample" where the run belongs to a sweep's protocol, else None
    objective: str = ""  # tune.objective, the quantity the confirmation's headline tests
    importances: pd.DataFrame | None = None  # OUT/importances.parquet of a sweep (param, objective, importance)
    selections: pd.DataFrame | None = None  # every committed selection (evaluation.composition.read_selections)
    selector_names: dict[str, str] = field(default_factory=dict)  # selector key (label) -> registry name


def read_config(store: ResultStore) -> dict:
    """The run's resolved config as a dict (safe YAML loader); ValueError if it does not parse."""
    try:
        cfg = yaml.safe_load(store.read_bytes("config.yaml"))
    except yaml.YAMLError as e:
        raise ValueError(f"{store.path('config.yaml')} is not valid YAML: {e}") from e
    return cfg if isinstance(cfg, dict) else {}


def section(cfg: dict, key: str, model: type[BaseModel]) -> BaseModel:
    """One section of a run's config through its config model (a folder that predates a field gets its default);
    ValueError naming the field when the stored value is not one the model accepts."""
    try:
        return model.model_validate(cfg.get(key) or {})
    except ValidationError as e:
        where = "; ".join(f"{key}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"config.yaml: {where}") from e


def expected_units(cfg: dict) -> dict:
    """The stage count, selector keys and seeds the resolved config promises (whatever of them it states)."""
    out: dict = {}
    if isinstance(cfg.get("stages"), list):
        out["n_stages"] = len(cfg["stages"])
    if isinstance(cfg.get("selectors"), list):
        out["selectors"] = [SelectorConfig.model_validate(s).key for s in cfg["selectors"] if isinstance(s, dict)]
    if isinstance(cfg.get("seeds"), list):
        out["seeds"] = [int(s) for s in cfg["seeds"] if isinstance(s, int)]
    return out


def _relabelled(df: pd.DataFrame | None, label: str) -> pd.DataFrame | None:
    return None if df is None else df.assign(selector=label)


def _concat(frames: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    present = [f for f in frames if f is not None]
    return pd.concat(present, ignore_index=True) if present else None


def read_runs(runs: list[tuple[str, ResultStore]]) -> dict[str, pd.DataFrame | None]:
    """The committed long tables of several run folders of one selector each, side by side: every row's selector
    becomes the run's label (a sweep's trials, each a run of ``lhas``, compared as ``t003_...``, ``t007_...``)."""
    tables: dict[str, list] = {"metrics": [], "curves": [], "timings": [], "terms": []}
    for label, run in runs:
        metrics, curves, timings = read_long_tables(run)
        terms = run.read_table("terms")
        for name, df in zip(tables, (metrics, curves, timings, terms.to_pandas() if terms else None), strict=True):
            tables[name].append(_relabelled(df, label))
    return {name: _concat(frames) for name, frames in tables.items()}


def sweep_runs(store: ResultStore, cfg: dict) -> list[tuple[str, ResultStore]]:
    """The sweep's best ``tune.report_top`` completed trials (by objective), each as (trial id, its run folder)."""
    trials = store.read_parquet("trials.parquet").to_pandas()
    done = trials[trials["status"] == "completed"]
    top = done.nlargest(section(cfg, "tune", TuningConfig).report_top, "objective")
    if top.empty:
        raise ValueError(f"{store.uri}: the sweep has no completed trial to report")
    return [(str(row.trial), ResultStore(posixpath.join(store.uri, str(row.run)))) for row in top.itertuples()]


def load_run(store: ResultStore) -> RunInputs:
    """Read and validate a run, or a sweep (its best trials' own folders side by side); ValueError naming what is
    missing when it is not a complete run."""
    if store.exists("sweep.yaml"):
        cfg = (yaml.safe_load(store.read_bytes("sweep.yaml")) or {}).get("config") or {}
        runs = sweep_runs(store, cfg)
        cfg = {**cfg, "selectors": [{"name": "lhas", "label": label} for label, _ in runs]}
        leaks_from = runs[0][1]
    elif store.is_run():
        cfg, runs, leaks_from = read_config(store), None, store
    else:
        raise ValueError(f"{store.uri} is not a lhas_ray run: it has no config.yaml")
    ev = section(cfg, "evaluation", EvaluationConfig)
    tune = section(cfg, "tune", TuningConfig)
    if runs is None:
        metrics, curves, timings = read_long_tables(store)
        terms = store.read_table("terms")
        terms = None if terms is None else terms.to_pandas()
        selections = read_selections(store)
    else:
        t = read_runs(runs)
        metrics, curves, timings, terms = t["metrics"], t["curves"], t["timings"], t["terms"]
        selections = _concat([read_selections(run, label) for label, run in runs])
    if metrics is None:
        raise ValueError(f"{store.uri}: the run has no committed metrics (metrics.parquet is missing or uncommitted)")
    problems = missing_units(metrics, **expected_units(cfg))
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError(f"{store.uri}: incomplete run, cannot report. Missing:\n  - " + "\n  - ".join(shown) + more)
    trials, leaks, confirmation, importances = (
        store.read_parquet(name).to_pandas() if store.exists(name) else None
        for name in ("trials.parquet", "pool_leaks.parquet", CONFIRMATION, "importances.parquet")
    )
    if leaks is None and leaks_from.exists("pool_leaks.parquet"):  # a sweep's trials share the data draws
        leaks = leaks_from.read_parquet("pool_leaks.parquet").to_pandas()
    return RunInputs(
        store.uri,
        metrics,
        curves,
        timings,
        trials,
        ev.lca_beta,
        ev.probe_threshold,
        settings_from(cfg),
        leaks,
        terms,
        confirmation,
        run_sample(tune, trials is not None),
        tune.objective if "tune" in cfg else "",
        importances,
        selections,
        selector_names(cfg),
    )


def selector_names(cfg: dict) -> dict[str, str]:
    """Selector key -> registry name, from the resolved config (a sweep's trials: lhas); the report's colours group
    selectors by family."""
    selectors = [SelectorConfig.model_validate(s) for s in cfg.get("selectors") or [] if isinstance(s, dict)]
    return {s.key: s.name for s in selectors}


def run_sample(tune: TuningConfig, is_sweep: bool) -> str | None:
    """Whether a run's numbers are held-out (a confirmation: it names the development seeds it avoids), in-sample (a
    sweep, or a run on the development seeds of a config that holds seeds out), or neither (a plain run: None)."""
    if tune.development_seeds:
        return HELDOUT
    return IN_SAMPLE if is_sweep or tune.heldout_seeds else None


SAMPLE_TEXT = {
    HELDOUT: "held-out: seeds the sweep never saw, each with a fresh data draw",
    IN_SAMPLE: "in-sample: the development seeds the weights were tuned on (optimistic for tuned selectors)",
}


def settings_from(cfg: dict) -> Settings:
    """The report's settings from the resolved config: baselines, forgetting variant, censoring, data draws."""
    ev = section(cfg, "evaluation", EvaluationConfig)
    data = section(cfg, "data", DataConfig)
    steps = (cfg.get("probe") or {}).get("steps")
    return Settings(
        baselines=ev.baselines,
        forgetting=ev.forgetting,
        censor_at=float(section(cfg, "probe", ProbeConfig).steps) + 1 if steps is not None else None,
        resample=data.resample,
        data_seed=data.seed,
        myopia_metrics=ev.myopia_metrics,
    )
