"""Experiment tracking: a finished run's trajectories in a local MLflow file store, read back with MLflow's client,
and in offline W&B run folders, each compared with the run's own parquet tables (read here with pandas, not through
the tracking code)."""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

import pandas as pd
import pytest

from lhas_ray.config import MLflowConfig
from lhas_ray.config.sections import WandbConfig


@pytest.fixture(scope="module")
def reported(clean_run, tmp_path_factory):
    """A copy of the session's clean run with its report written (a tracker logs the report)."""
    from lhas_ray.report import write_report

    cfg, clean_out = clean_run
    out = str(tmp_path_factory.mktemp("tracked") / "run")
    shutil.copytree(clean_out, out)  # the report is written into a copy, not into the shared clean run
    write_report(out)
    return cfg, out


@pytest.fixture(scope="module")
def logged(reported, tmp_path_factory):
    pytest.importorskip("mlflow", reason="tracking needs the mlflow extra (pip install 'lhas_ray[mlflow]')")
    from lhas_ray.tracking import log_run_to_mlflow

    cfg, out = reported
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


def logged_values(data: bytes, key: str) -> list[Any]:
    """Every JSON value a ``.wandb`` log holds under ``key`` (config items, history rows, summaries), in order.

    Not a reader of the log (wandb 0.31 has none, and writes no config.yaml or wandb-summary.json offline): a scan for
    the item's key bytes and its value (protobuf field 16: 0x82 0x01, a varint length, the JSON). A value cut by the
    log's 32 KiB block framing does not decode and is left out; every history row is stored twice (its summary
    update, then the row), so its other copy is still there."""
    tag = bytes([len(key)]) + key.encode() + b"\x82\x01"
    values, i = [], data.find(tag)
    while i >= 0:
        j, n, shift = i + len(tag), 0, 0
        while True:
            byte = data[j]
            j, n, shift = j + 1, n | (byte & 0x7F) << shift, shift + 7
            if byte < 0x80:
                break
        try:
            values.append(json.loads(data[j : j + n]))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError: a value cut by a block boundary
            pass
        i = data.find(tag, i + len(tag))
    return values


def offline_runs(root: str) -> dict[str, str]:
    """{W&B run id: its offline run folder} under ``root/wandb``."""
    return {f.rsplit("-", 1)[1]: f for f in glob.glob(os.path.join(root, "wandb", "offline-run-*"))}


@pytest.fixture(scope="module")
def wandb_logged(reported, tmp_path_factory):
    pytest.importorskip("wandb", reason="tracking.wandb needs the wandb extra (pip install 'lhas_ray[wandb]')")
    from lhas_ray.tracking_wandb import log_run_to_wandb

    cfg, out = reported
    settings = WandbConfig(project="micro-tracked", dir=str(tmp_path_factory.mktemp("wandb")))
    return cfg, out, settings, log_run_to_wandb(out, cfg, settings)


@pytest.mark.slow  # the session's clean run
def test_one_offline_wandb_run_per_trajectory_with_config_curves_final_metrics_and_report(wandb_logged):
    from lhas_ray.tracking import trajectory_key
    from lhas_ray.tracking_wandb import wandb_run_id

    cfg, out, settings, runs = wandb_logged
    folders = offline_runs(settings.dir)
    assert len(runs) == 2 and sorted(folders) == sorted(runs.values())
    curves = pd.read_parquet(f"{out}/curves.parquet")
    trajectory = pd.read_parquet(f"{out}/trajectory.parquet")
    for sel in ("random", "loss_high"):
        rid = runs[trajectory_key(out, sel, 0)]
        assert rid == wandb_run_id(trajectory_key(out, sel, 0))  # the trajectory's own id, the same on every rerun
        data = open(os.path.join(folders[rid], f"run-{rid}.wandb"), "rb").read()
        assert len(data) > 1000
        # config: the selector (name, parameters), the seed, the resolved config
        assert logged_values(data, "selector") == [{"name": sel, "params": {}}]
        assert logged_values(data, "seed") == [0]
        assert logged_values(data, "training")[0]["lr"] == cfg.training.lr
        # a curve, every point (each row is stored twice: history and summary update)
        want = curves[(curves.selector == sel) & (curves.stage == 1) & (curves.split == "train")]
        want = want[want.metric == "loss"].sort_values("step")
        got = logged_values(data, "train/loss/stage1")
        assert len(want) > 5 and sorted(set(got)) == sorted(set(want.value))
        assert logged_values(data, "train/stage1/step")[-1] == want.step.max()
        # the final trajectory metrics: the last value of each traj/<metric> (W&B's summary) is its last stage's
        mine = trajectory[trajectory.selector == sel].dropna(subset=["value"]).sort_values("stage")
        final = mine.groupby("metric").value.last()
        assert len(final) >= 12 and mine.stage.max() == 2
        for metric, value in final.items():
            assert logged_values(data, f"traj/{metric}")[-1] == pytest.approx(value), metric
        # files: the report and the run's config
        files = os.path.join(folders[rid], "files")
        for name in ("report.html", "report.md"):
            assert open(os.path.join(files, name), "rb").read() == open(os.path.join(out, name), "rb").read()
        assert open(os.path.join(files, "lhas_ray_config.yaml")).read().startswith("name: micro")


@pytest.mark.slow
def test_logging_to_wandb_again_adds_no_run(wandb_logged):
    from lhas_ray.tracking_wandb import log_run_to_wandb

    cfg, out, settings, runs = wandb_logged
    assert log_run_to_wandb(out, cfg, settings) == runs
    assert len(offline_runs(settings.dir)) == 2


def test_wandb_config_holds_the_selector_parameters(tmp_path):
    """A synthetic run (no Ray, no report): the selector's parameters and seed in the W&B run's config."""
    pytest.importorskip("wandb", reason="tracking.wandb needs the wandb extra (pip install 'lhas_ray[wandb]')")
    from lhas_ray.config import config_from_dict
    from lhas_ray.tracking_wandb import log_run_to_wandb
    from tests.helpers import micro_config
    from tests.synthetic_run import build_synthetic_run

    raw = micro_config()
    raw["selectors"] = [{"name": "lhas", "params": {"l_u": 0.5, "utility": "target"}}]
    raw["seeds"] = [3]
    build_synthetic_run(str(tmp_path / "run"), selectors=["lhas"], seeds=[3], n_stages=2)
    settings = WandbConfig(dir=str(tmp_path / "wb"), tags=["synthetic"])
    (rid,) = log_run_to_wandb(str(tmp_path / "run"), config_from_dict(raw), settings).values()
    data = open(os.path.join(offline_runs(settings.dir)[rid], f"run-{rid}.wandb"), "rb").read()
    assert logged_values(data, "selector") == [{"name": "lhas", "params": {"l_u": 0.5, "utility": "target"}}]
    assert logged_values(data, "seed") == [3]
    assert logged_values(data, "lhas_ray")[0]["selector"] == "lhas"
    assert b"synthetic" in data and b"trajectory" in data  # the tag, the job type


def test_history_rows_give_each_curve_its_own_axis_in_step_order():
    from lhas_ray.tracking_wandb import history_rows

    points = [("train/loss/stage2", 0.4, 20), ("train/loss/stage2", 0.5, 10), ("eval/acc/stage2", 0.1, 10)]
    points += [("traj/acc", 0.3, 2), ("traj/acc", 0.2, 1), ("traj/gain", 0.05, 2)]
    assert history_rows(points) == [
        {"eval/stage2/step": 10, "eval/acc/stage2": 0.1},
        {"stage": 1, "traj/acc": 0.2},
        {"stage": 2, "traj/acc": 0.3, "traj/gain": 0.05},
        {"train/stage2/step": 10, "train/loss/stage2": 0.5},
        {"train/stage2/step": 20, "train/loss/stage2": 0.4},
    ]


def test_a_sweep_logs_each_trial_through_rays_wandb_callback():
    """tracking.wandb in a sweep: Ray's WandbLoggerCallback with the config's project, mode and group; offline
    needs no API key."""
    pytest.importorskip("wandb", reason="tracking.wandb needs the wandb extra (pip install 'lhas_ray[wandb]')")
    from ray.air.integrations.wandb import WandbLoggerCallback

    from lhas_ray.config import config_from_dict
    from lhas_ray.tuning.trials import tune_callbacks
    from tests.helpers import micro_config

    raw = micro_config()
    raw["tracking"] = {"wandb": {"project": "micro-sweep-project", "dir": "wb", "tags": ["t"]}}
    (callback,) = [c for c in tune_callbacks(config_from_dict(raw)) if isinstance(c, WandbLoggerCallback)]
    assert (callback.project, callback.group) == ("micro-sweep-project", "micro-sweep")
    assert callback.kwargs["mode"] == "offline" and callback.kwargs["job_type"] == "trial"
    assert callback.kwargs["dir"] == os.path.abspath("wb") and callback.kwargs["tags"] == ["t"]
    callback.setup()  # no WANDB_API_KEY, no WANDB_MODE: offline needs neither
    assert not [c for c in tune_callbacks(config_from_dict(micro_config())) if isinstance(c, WandbLoggerCallback)]


def test_wandb_configured_but_not_installed_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    import importlib.util

    import ray
    import yaml

    from lhas_ray.cli import main
    from tests.helpers import micro_config

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else find_spec(n, *a))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started for a refused config"))
    raw = micro_config()
    raw["tracking"] = {"wandb": {"mode": "offline"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    assert (
        "tracking.wandb: the wandb package is not installed; pip install 'lhas_ray[wandb]'" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


WARM = """
import sys
from lhas_ray.config import config_from_dict
from lhas_ray.tracking import warm_trackers
from tests.helpers import micro_config

raw = micro_config()
assert warm_trackers(config_from_dict(raw)) is None
raw["tracking"] = {"mlflow": {"tracking_uri": "file:///unused"}}
assert "mlflow" not in sys.modules
thread = warm_trackers(config_from_dict(raw))
thread.join(120)
print("mlflow.tracking" in sys.modules, thread.daemon)
"""


def test_enabled_trackers_are_imported_on_a_daemon_thread_while_the_run_trains():
    """`warm_trackers`: nothing without a tracker; with MLflow, a daemon thread that leaves it imported (checked in a
    fresh interpreter, where nothing imported it before)."""
    pytest.importorskip("mlflow", reason="tracking needs the mlflow extra (pip install 'lhas_ray[mlflow]')")
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", WARM], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]
