"""Experiment trackers, off by default: a finished run's trajectories as MLflow runs, read back from the results
store (the source of truth), so a resumed run logs once what it has, and a rerun of a logged run logs nothing twice.

One MLflow run per trajectory (selector x seed): params are the resolved config (flattened, dotted keys) and the
selector's parameters; metrics are every curve point (``<split>/<metric>/stage<t>`` by step) and every trajectory
metric per stage (``traj/<metric>`` with step = stage); the report (``report.html``, ``report.md``) is an artifact.
Sweeps log each Tune trial through Ray's own ``MLflowLoggerCallback`` (``tuning/trials.py``). The pieces every
tracker shares (which trajectories are complete, their parameters, metric points and report files) live here;
``tracking_wandb.py`` is the W&B side.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from lhas_ray.config import ExperimentConfig
from lhas_ray.config.sections import MLflowConfig, SelectorConfig
from lhas_ray.store import ResultStore

log = logging.getLogger(__name__)
KEY_TAG = "lhas_ray.trajectory"  # out + selector + seed: what makes a tracker run this run's trajectory
REPORT_FILES = ("report.html", "report.md")
_MAX_PARAM = 6000  # MLflow's longest param value


@dataclass(frozen=True)
class RunTables:
    """What a tracker logs of a finished run: its store, its tables, its complete trajectories, its report files."""

    store: ResultStore
    curves: pd.DataFrame | None
    trajectory: pd.DataFrame | None  # None before the report wrote trajectory.parquet (--no-report)
    complete: list[tuple[SelectorConfig, int]]  # (selector, seed) of every trajectory committed to its last stage
    files: dict[str, bytes]  # report.html, report.md (those written) and config.yaml, by name


def read_run_tables(out: str, cfg: ExperimentConfig) -> RunTables:
    """Read the run in ``out`` back from its results store, as every tracker logs it."""
    store = ResultStore(out)
    curves = store.read_table("curves")
    curves = curves.to_pandas() if curves is not None else None
    trajectory = store.read_parquet("trajectory.parquet").to_pandas() if store.exists("trajectory.parquet") else None
    last = len(cfg.stages)
    done = {(u.selector, u.seed) for u in store.committed_units() if u.stage == last}
    complete = [(sel, seed) for sel in cfg.selectors for seed in cfg.seeds if (sel.key, seed) in done]
    files = {name: store.read_bytes(name) for name in REPORT_FILES if store.exists(name)}
    files["config.yaml"] = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode()
    return RunTables(store, curves, trajectory, complete, files)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Dotted keys and string values of a nested config (lists by index), as MLflow params want them: strings as
    they are, other values as JSON."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        for i, v in enumerate(tree):
            yield from flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), (tree if isinstance(tree, str) else json.dumps(tree))[:_MAX_PARAM]


def trajectory_key(out: str, selector: str, seed: int) -> str:
    return f"{out}::{selector}::s{seed}"


def trajectory_params(cfg: ExperimentConfig, sel: SelectorConfig, seed: int) -> dict[str, Any]:
    """One trajectory's parameters, nested: the resolved config (less selectors, trackers and output), its
    selector (``selector.name``, ``selector.params.*``) and its ``seed``."""
    params = cfg.model_dump(mode="json", exclude={"selectors", "tracking", "output"})
    selector = sel.model_dump(mode="json")
    return {**params, "selector": {"name": sel.name, "params": dict(sorted(selector["params"].items()))}, "seed": seed}


def metric_points(
    curves: pd.DataFrame | None, trajectory: pd.DataFrame | None, selector: str, seed: int
) -> list[tuple[str, float, int]]:
    """(key, value, step) of one trajectory: its curves by step (``<split>/<metric>/stage<t>``), then its trajectory
    metrics by stage (``traj/<metric>``, NaN left out)."""
    out: list[tuple[str, float, int]] = []
    if curves is not None:
        c = curves[(curves.selector == selector) & (curves.seed == seed)]
        keys = c.split + "/" + c.metric + "/stage" + c.stage.astype(str)
        out += [(k, float(v), int(s)) for k, v, s in zip(keys, c.value, c.step, strict=True)]
    if trajectory is not None:
        t = trajectory[(trajectory.selector == selector) & (trajectory.seed == seed)].dropna(subset=["value"])
        out += [(f"traj/{m}", float(v), int(s)) for m, v, s in zip(t.metric, t.value, t.stage, strict=True)]
    return out


def _import_mlflow() -> None:
    import mlflow.tracking  # noqa: F401


def _start_wandb() -> None:
    import ray.air.integrations.wandb  # noqa: F401  (what tracking_wandb imports at its top)
    import wandb

    wandb.setup()  # the service process that ``wandb.init`` would otherwise start, and ``teardown`` ends


def warm_trackers(cfg: ExperimentConfig) -> threading.Thread | None:
    """Import the enabled trackers (and start W&B's service) on a daemon thread while the run trains, so logging at
    the end pays only for its calls: the driver mostly waits on Ray meanwhile. None if no tracker is enabled."""
    tasks = []
    if cfg.tracking.mlflow is not None:
        tasks.append(_import_mlflow)
    if cfg.tracking.wandb is not None and cfg.tracking.wandb.mode != "disabled":
        tasks.append(_start_wandb)
    if not tasks:
        return None

    def warm() -> None:
        for task in tasks:
            try:
                task()
            except Exception as exc:  # noqa: BLE001  (logging at the end imports again and says what is wrong)
                log.debug("warming a tracker failed: %s", exc)

    thread = threading.Thread(target=warm, name="lhas-warm-trackers", daemon=True)
    thread.start()
    return thread


def log_run_to_mlflow(out: str, cfg: ExperimentConfig, settings: MLflowConfig) -> dict[str, str]:
    """Log every complete trajectory of the run in ``out`` not yet logged; returns {trajectory key: MLflow run id}."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    run = read_run_tables(out, cfg)
    client = MlflowClient(tracking_uri=settings.tracking_uri or mlflow.get_tracking_uri())
    name = settings.experiment or cfg.name
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    logged: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lhas-mlflow-") as tmp:
        report = []
        for name_ in REPORT_FILES:
            if name_ in run.files:
                report.append(os.path.join(tmp, name_))
                with open(report[-1], "wb") as f:
                    f.write(run.files[name_])
        for sel, seed in run.complete:
            key = trajectory_key(run.store.uri, sel.key, seed)
            found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
            if found:
                logged[key] = found[0].info.run_id
                continue
            tags = {KEY_TAG: key, "selector": sel.key, "seed": str(seed), "lhas_ray.out": run.store.uri}
            rid = client.create_run(experiment_id, run_name=f"{sel.key}/s{seed}", tags=tags).info.run_id
            items = [Param(k, v) for k, v in flatten(trajectory_params(cfg, sel, seed))]
            for i in range(0, len(items), 100):  # MLflow's batch limits: 100 params, 1000 metrics
                client.log_batch(rid, params=items[i : i + 100])
            metrics = [Metric(k, v, 0, s) for k, v, s in metric_points(run.curves, run.trajectory, sel.key, seed)]
            for i in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[i : i + 1000])
            for path in report:
                client.log_artifact(rid, path)
            client.log_text(rid, run.files["config.yaml"].decode(), "config.yaml")
            client.set_terminated(rid)
            logged[key] = rid
    log.info("mlflow: %d trajectories of %s in experiment %r", len(logged), out, name)
    return logged
