"""Weights & Biases tracking, off by default: a finished run's trajectories as W&B runs, read back from the results
store as the MLflow side reads them (``tracking.py``), and each sweep trial through Ray's ``WandbLoggerCallback``.

One W&B run per trajectory, its id derived from the trajectory (so a rerun finds it and logs nothing twice): config
is the resolved config with the selector's name and parameters and the seed (W&B shows nested keys dotted, the same
names as MLflow's params); history is every curve point (``<split>/<metric>/stage<t>`` against its own x-axis
``<split>/stage<t>/step``: W&B keeps one step per run) and every trajectory metric (``traj/<metric>`` against
``stage``), so the summary holds each one's final stage; files are the report and the config.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback

from lhas_ray.config import ExperimentConfig
from lhas_ray.config.sections import WandbConfig
from lhas_ray.tracking import metric_points, read_run_tables, trajectory_key, trajectory_params

log = logging.getLogger(__name__)
# The process that writes a W&B run here is not the one that trained (a run is logged after the fact, a trial by
# Ray's logging actor beside it): its console, machine, packages and git state are not captured (init: ms, not s).
RUN_SETTINGS = {
    "silent": True,
    "console": "off",
    "x_disable_stats": True,
    "x_disable_meta": True,
    "x_disable_machine_info": True,
    "x_save_requirements": False,
    "disable_git": True,
}
CONFIG_FILE = "lhas_ray_config.yaml"  # files/config.yaml is W&B's own (the run's config)


def wandb_run_id(key: str) -> str:
    """The W&B run id of a trajectory key: the same trajectory always maps to the same run."""
    return hashlib.sha1(key.encode()).hexdigest()[:32]


def step_key(key: str) -> str:
    """The x-axis of a metric key: ``stage`` for ``traj/*``, ``<split>/stage<t>/step`` for a curve."""
    if key.startswith("traj/"):
        return "stage"
    return f"{key.split('/', 1)[0]}/{key.rsplit('/', 1)[1]}/step"


def history_rows(points: list[tuple[str, float, int]]) -> list[dict[str, float | int]]:
    """The points as W&B history rows: one row per (x-axis, step) holding every series on it, steps ascending."""
    rows: dict[tuple[str, int], dict[str, float | int]] = {}
    for key, value, step in points:
        axis = step_key(key)
        rows.setdefault((axis, step), {axis: step})[key] = value
    return [rows[k] for k in sorted(rows)]


def offline_logged(root: str, run_id: str) -> bool:
    """Whether ``root/wandb`` already holds an offline run of this id (synced or not)."""
    return bool(glob.glob(os.path.join(glob.escape(root), "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb")))


def _log_trajectory(run: Any, points: list[tuple[str, float, int]], files: dict[str, bytes]) -> None:
    """Curves and trajectory metrics into the run's history, the report and config into its files."""
    rows = history_rows(points)
    for axis in sorted({step_key(k) for k, _, _ in points}):
        run.define_metric(axis, hidden=True)
    for key in sorted({k for k, _, _ in points}):
        run.define_metric(key, step_metric=step_key(key))
    for row in rows:
        run.log(row)
    for name, data in files.items():
        path = os.path.join(run.dir, CONFIG_FILE if name == "config.yaml" else name)
        with open(path, "wb") as f:
            f.write(data)
        run.save(path, base_path=run.dir, policy="now")


def log_run_to_wandb(out: str, cfg: ExperimentConfig, settings: WandbConfig) -> dict[str, str]:
    """Log every complete trajectory of the run in ``out`` not yet logged; returns {trajectory key: W&B run id}.

    Ends by shutting down this process's wandb service (so every run folder is complete on return)."""
    if settings.mode == "disabled":
        return {}
    import wandb

    run_tables = read_run_tables(out, cfg)
    root = os.path.abspath(settings.dir or os.environ.get("WANDB_DIR") or os.getcwd())
    os.makedirs(root, exist_ok=True)
    logged: dict[str, str] = {}
    for sel, seed in run_tables.complete:
        key = trajectory_key(run_tables.store.uri, sel.key, seed)
        rid = wandb_run_id(key)
        logged[key] = rid
        if settings.mode == "offline" and offline_logged(root, rid):
            continue
        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            group=settings.group or cfg.name,
            job_type="trajectory",
            name=f"{sel.key}/s{seed}",
            id=rid,
            tags=settings.tags,
            dir=root,
            mode=settings.mode,
            resume="allow",  # online: an existing run of this id comes back resumed, and is left as it is
            reinit="create_new",
            settings=RUN_SETTINGS,
        )
        try:
            if run.resumed:
                continue
            lhas = {"trajectory": key, "out": run_tables.store.uri, "selector": sel.key}
            run.config.update({**trajectory_params(cfg, sel, seed), "lhas_ray": lhas})
            points = metric_points(run_tables.curves, run_tables.trajectory, sel.key, seed)
            _log_trajectory(run, points, run_tables.files)
        finally:
            run.finish()
    wandb.teardown()  # finish() returns before wandb-core has written an offline run's log; teardown waits for it
    log.info("wandb: %d trajectories of %s in project %r (%s)", len(logged), out, settings.project, settings.mode)
    return logged


class WandbTrialLogger(WandbLoggerCallback):
    """Ray's ``WandbLoggerCallback`` (one W&B run per Tune trial), minus its API-key check where the mode needs
    none: Ray reads only the WANDB_MODE variable, and an offline sweep should not need it set."""

    def setup(self, *args, **kwargs) -> None:
        if self.kwargs.get("mode") in ("offline", "disabled"):
            return
        super().setup(*args, **kwargs)


def wandb_trial_logger(settings: WandbConfig, name: str) -> WandbTrialLogger:
    """The sweep's W&B callback from ``tracking.wandb`` of the config called ``name``; group '<name>-sweep'."""
    extra = {"dir": os.path.abspath(settings.dir)} if settings.dir else {}  # Ray's logger runs in the trial's folder
    return WandbTrialLogger(
        project=settings.project,
        group=settings.group or f"{name}-sweep",
        entity=settings.entity,
        mode=settings.mode,
        tags=settings.tags,
        job_type="trial",
        settings=RUN_SETTINGS,
        **extra,
    )
