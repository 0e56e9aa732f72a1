"""Experiment trackers, off by default: a finished run's trajectories as MLflow runs, read back from the results
store (the source of truth), so a resumed run logs once what it has, and a rerun of a logged run logs nothing twice.

One MLflow run per trajectory (selector x seed): params are the resolved config (flattened, dotted keys) and the
selector's parameters; metrics are every curve point (``<split>/<metric>/stage<t>`` by step) and every trajectory
metric per stage (``traj/<metric>`` with step = stage); the report (``report.html``, ``report.md``) is an artifact.
Sweeps log each Tune trial through Ray's own ``MLflowLoggerCallback`` (``tuning/sweep.py``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pandas as pd
import yaml

from lhas_ray.config import ExperimentConfig
from lhas_ray.config.sections import MLflowConfig
from lhas_ray.store import ResultStore

log = logging.getLogger(__name__)
KEY_TAG = "lhas_ray.trajectory"  # out + selector + seed: what makes a tracker run this run's trajectory
_MAX_PARAM = 6000  # MLflow's longest param value


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Dotted keys and string values of a nested config (lists by index), as MLflow params want them."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        for i, v in enumerate(tree):
            yield from flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), json.dumps(tree)[:_MAX_PARAM]


def trajectory_key(out: str, selector: str, seed: int) -> str:
    return f"{out}::{selector}::s{seed}"


def _metrics(curves: pd.DataFrame | None, trajectory: pd.DataFrame | None, selector: str, seed: int):
    """MLflow Metric entities of one trajectory: its curves by step, its trajectory metrics by stage."""
    from mlflow.entities import Metric

    out = []
    if curves is not None:
        c = curves[(curves.selector == selector) & (curves.seed == seed)]
        keys = c.split + "/" + c.metric + "/stage" + c.stage.astype(str)
        out += [Metric(k, float(v), 0, int(s)) for k, v, s in zip(keys, c.value, c.step, strict=True)]
    if trajectory is not None:
        t = trajectory[(trajectory.selector == selector) & (trajectory.seed == seed)].dropna(subset=["value"])
        out += [Metric(f"traj/{m}", float(v), 0, int(s)) for m, v, s in zip(t.metric, t.value, t.stage, strict=True)]
    return out


def log_run_to_mlflow(out: str, cfg: ExperimentConfig, settings: MLflowConfig) -> dict[str, str]:
    """Log every complete trajectory of the run in ``out`` not yet logged; returns {trajectory key: MLflow run id}."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    store = ResultStore(out)
    client = MlflowClient(tracking_uri=settings.tracking_uri or mlflow.get_tracking_uri())
    name = settings.experiment or cfg.name
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    curves = store.read_table("curves")
    curves = curves.to_pandas() if curves is not None else None
    trajectory = store.read_parquet("trajectory.parquet").to_pandas() if store.exists("trajectory.parquet") else None
    base = dict(flatten(cfg.model_dump(mode="json", exclude={"selectors", "tracking", "output"})))
    last = len(cfg.stages)
    done = {(u.selector, u.seed) for u in store.committed_units() if u.stage == last}
    logged: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lhas-mlflow-") as tmp:
        report = []
        for name_ in ("report.html", "report.md"):
            if store.exists(name_):
                report.append(os.path.join(tmp, name_))
                with open(report[-1], "wb") as f:
                    f.write(store.read_bytes(name_))
        for sel in cfg.selectors:
            for seed in cfg.seeds:
                if (sel.key, seed) not in done:
                    continue
                key = trajectory_key(store.uri, sel.key, seed)
                found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
                if found:
                    logged[key] = found[0].info.run_id
                    continue
                tags = {KEY_TAG: key, "selector": sel.key, "seed": str(seed), "lhas_ray.out": store.uri}
                rid = client.create_run(experiment_id, run_name=f"{sel.key}/s{seed}", tags=tags).info.run_id
                params = {**base, "selector.name": sel.name, "seed": str(seed)}
                params.update({f"selector.params.{k}": json.dumps(v) for k, v in sorted(sel.params.items())})
                items = [Param(k, v) for k, v in params.items()]
                for i in range(0, len(items), 100):  # MLflow's batch limits: 100 params, 1000 metrics
                    client.log_batch(rid, params=items[i : i + 100])
                metrics = _metrics(curves, trajectory, sel.key, seed)
                for i in range(0, len(metrics), 1000):
                    client.log_batch(rid, metrics=metrics[i : i + 1000])
                for path in report:
                    client.log_artifact(rid, path)
                client.log_text(rid, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config.yaml")
                client.set_terminated(rid)
                logged[key] = rid
    log.info("mlflow: %d trajectories of %s in experiment %r", len(logged), out, name)
    return logged
