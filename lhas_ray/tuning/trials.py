"""Ray Tune plumbing shared by ``run``'s side-by-side trajectory groups and the sweep's trials.

A trial launches its own Train run (Train V2: ``TorchTrainer.fit()`` inside the trial), so the trial itself holds no
CPU and the number of trials at once comes from the cluster's resources. Tune's state lives under ``OUT/_tune/``,
through the results store's filesystem (local, ``file://``, ``s3://``, ``gs://``)."""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable

import pyarrow.fs as pafs
from ray import tune
from ray.tune.logger import TBXLoggerCallback

from lhas_ray.config import ExperimentConfig
from lhas_ray.store import ResultStore
from lhas_ray.tuning.capacity import max_cluster_resources
from lhas_ray.tuning.scores import below_floor

TUNE_DIR = "_tune"
log = logging.getLogger("lhas_ray.tuning")
TRIAL_MEMORY = 256 * 1024**2  # bytes a trial (the driver of its Train run) reserves; it reserves no CPU


def trial_resources(fn: Callable, **params):
    """``fn`` as Tune's trainable: ``params`` in the object store, no CPU of its own (its Train run has them).

    Tune needs some resource per trial, so the trial asks for the memory of its driver process (256 MiB) only.
    """
    return tune.with_resources(tune.with_parameters(fn, **params), {"CPU": 0, "memory": TRIAL_MEMORY})


def child_uri(out: str, *parts: str) -> str:
    """A path under ``out`` that every process can open: absolute for local paths, the same scheme for URIs."""
    if "://" in out:
        return posixpath.join(out.rstrip("/"), *parts)
    return os.path.join(os.path.abspath(out), *parts)


def trial_concurrency(cfg: ExperimentConfig, resources: dict[str, float] | None = None) -> int:
    """Trials at once: tune.max_concurrent, else as many Train runs (workers x CPUs/GPUs each) as the cluster fits."""
    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    res = resources if resources is not None else max_cluster_resources()[0]
    t = cfg.training
    n = int(res.get("CPU", 0) // (t.num_workers * t.cpus_per_worker))
    if t.use_gpu:
        n = min(n, int(res.get("GPU", 0) // t.num_workers))
    return max(1, n)


class _NoTensorBoard(TBXLoggerCallback):
    """Stands in for Tune's TensorBoard logger: each run folder has its own, and Tune's warns on every inf."""

    def __init__(self):
        pass

    def log_trial_start(self, trial) -> None:
        pass

    def log_trial_result(self, iteration, trial, result) -> None:
        pass

    def log_trial_end(self, trial, failed: bool = False) -> None:
        pass


def tune_callbacks(cfg: ExperimentConfig | None = None) -> list:
    """Tune's default loggers minus TensorBoard, plus Ray's ``MLflowLoggerCallback`` (one MLflow run per trial: its
    parameters and every result it reports) when ``tracking.mlflow`` is set, and its ``WandbLoggerCallback`` (the
    same per W&B run) when ``tracking.wandb`` is.

    A trial that ASHA stops takes its Train controller with it; Ray Train's own placement-group cleaner (which asks
    the dashboard's state API, so init_ray starts the dashboard) frees the CPUs/GPUs that controller's run held.
    """
    callbacks: list = [_NoTensorBoard()]
    if cfg is not None and cfg.tracking.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        settings = cfg.tracking.mlflow
        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=settings.tracking_uri,
                experiment_name=f"{settings.experiment or cfg.name}-sweep",
                tags={"lhas_ray.config": cfg.name},
                save_artifact=False,
            )
        )
    if cfg is not None and cfg.tracking.wandb is not None:  # Ray's WandbLoggerCallback, one W&B run per trial
        from lhas_ray.tracking_wandb import wandb_trial_logger

        callbacks.append(wandb_trial_logger(cfg.tracking.wandb, cfg.name))
    return callbacks


def tune_storage(store: ResultStore) -> tuple[str, pafs.FileSystem | None]:
    """Tune's storage_path (and filesystem for object stores) under the store's folder."""
    local = store.local_path(TUNE_DIR)
    return (local, None) if local else (store.path(TUNE_DIR), store.fs)


def trial_name(trial) -> str:
    """``t<number>_<trial_id>``: the trial's place in the sweep (kept across restores), then Tune's unique id."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"t{int(number):03d}_{trial.trial_id}" if number.isdigit() else str(trial.trial_id)


def objective_text(result: dict) -> str:
    """``objective 0.123``, plus what ASHA and TPE ranked it by when an immediate floor cut it
    (``constrained_objective``, only in floored sweeps)."""
    objective = result.get("objective", float("nan"))
    text = f"objective {objective:.3f}"
    score = result.get("constrained_objective")
    if score is not None and below_floor(objective, score):
        text += (
            f" (ranked at {score:.3f}: immediate {result.get('immediate_score', float('nan')):.3f} is below the floor)"
        )
    return text


class TrialLines(tune.Callback):
    """The sweep's console: a line per committed stage of a trial (with its objective so far), per finished trial
    and per failed one, instead of Tune's status tables."""

    def __init__(self, total: int):
        self.total = total
        self.finished = 0

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "seed" not in result:  # the trial's closing report (every stage already announced)
            return
        log.info(
            "trial %s: seed %s stage %s done, %s so far",
            trial_name(trial),
            result["seed"],
            result["stage"],
            objective_text(result),
        )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.finished += 1
        result = trial.last_result or {}
        log.info(
            "[%d/%d] trial %s ended after %s stage(s): %s",
            self.finished,
            self.total,
            trial_name(trial),
            result.get("stages_done", "?"),
            objective_text(result),
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.finished += 1
        log.warning(
            "[%d/%d] trial %s failed; its error and logs: %s", self.finished, self.total, trial_name(trial), trial.path
        )
