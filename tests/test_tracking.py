"""Experiment tracking: a finished run's trajectories in a local MLflow file store, read back with MLflow's client and
compared with the run's own parquet tables (read here with pandas, not through the tracking code)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lhas_ray.config import MLflowConfig

mlflow = pytest.importorskip("mlflow", reason="tracking needs the mlflow extra (pip install 'lhas_ray[mlflow]')")


@pytest.fixture(scope="module")
def logged(clean_run, tmp_path_factory):
    from lhas_ray.report import write_report
    from lhas_ray.tracking import log_run_to_mlflow

    cfg, clean_out = clean_run
    out = str(tmp_path_factory.mktemp("tracked") / "run")
    shutil.copytree(clean_out, out)  # the report is written into a copy, not into the shared clean run
    write_report(out)
    uri = f"file://{tmp_path_factory.mktemp('mlruns')}"
    settings = MLflowConfig(tracking_uri=uri, experiment="micro-tracked")
    return cfg, out, uri, settings, log_run_to_mlflow(out, cfg, settings)


@pytest.mark.slow  # the session's clean run
def test_one_mlflow_run_per_trajectory_with_config_params_curves_and_report(logged):
    from mlflow.tracking import MlflowClient

    cfg, out, uri, _, runs = logged
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("micro-tracked")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["selector"] for r in found) == ["loss_high", "random"] and len(runs) == 2
    curves = pd.read_parquet(f"{out}/curves.parquet")
    trajectory = pd.read_parquet(f"{out}/trajectory.parquet")
    for run in found:
        sel = run.data.tags["selector"]
        params = run.data.params
        assert params["training.lr"] == json.dumps(cfg.training.lr) and params["selector.name"] == sel
        assert params["stages.1.budget"] == "64" and params["seed"] == "0"
        # a curve, point by point
        want = curves[(curves.selector == sel) & (curves.stage == 1) & (curves.split == "train")]
        want = want[want.metric == "loss"].sort_values("step")
        got = sorted(client.get_metric_history(run.info.run_id, "train/loss/stage1"), key=lambda m: m.step)
        assert [m.step for m in got] == want.step.tolist() and len(got) > 5
        assert [m.value for m in got] == pytest.approx(want.value.tolist())
        # a trajectory metric, by stage
        acc = trajectory[(trajectory.selector == sel) & (trajectory.metric == "acc")].sort_values("stage")
        history = sorted(client.get_metric_history(run.info.run_id, "traj/acc"), key=lambda m: m.step)
        assert [m.step for m in history] == acc.stage.tolist() == [1, 2]
        assert [m.value for m in history] == pytest.approx(acc.value.tolist())
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.html", "report.md", "config.yaml"} <= artifacts


@pytest.mark.slow
def test_logging_again_adds_no_run(logged):
    from mlflow.tracking import MlflowClient

    from lhas_ray.tracking import log_run_to_mlflow

    cfg, out, uri, settings, runs = logged
    assert log_run_to_mlflow(out, cfg, settings) == runs
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("micro-tracked")
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_tracking_is_not_part_of_a_runs_identity(tmp_path):
    """A finished run's folder accepts the same config with a tracker added (to log it), not another config."""
    from lhas_ray.config import config_from_dict
    from lhas_ray.launch import ensure_same_run
    from lhas_ray.store import ResultStore
    from tests.helpers import micro_config

    store = ResultStore(str(tmp_path / "run"))
    ensure_same_run(store, config_from_dict(micro_config()))
    tracked = micro_config()
    tracked["tracking"] = {"mlflow": {"tracking_uri": f"file://{tmp_path}/mlruns"}}
    ensure_same_run(store, config_from_dict(tracked))
    with pytest.raises(ValueError, match="different config"):
        ensure_same_run(store, config_from_dict(micro_config(lr=1e-2)))
