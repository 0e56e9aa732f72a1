"""``lhas-ray tune``: trial and best configs, scheduling, a bad space failing before Ray, a NaN trial failing while
the sweep goes on, and a real sweep killed mid-way, resumed (finished trials untouched) with a Train worker killed
and the trial retried."""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import psutil
import pytest
import ray.cloudpickle
import yaml

from lhas_ray import cli
from lhas_ray.config import ConfigError, config_from_dict, load_config
from lhas_ray.store import ResultStore
from lhas_ray.tuning.configs import best_config, trial_config, tuned_selector
from lhas_ray.tuning.space import parse_search_space
from lhas_ray.tuning.sweep import run_sweep
from lhas_ray.tuning.trials import trial_concurrency
from tests.helpers import fake_protocol, kill_tree, sweep_config

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stub protocol below runs inside Tune trials


SPACE = {
    "params": {"l_u": {"type": "uniform", "low": 0.1, "high": 2.0}, "l_a": {"type": "uniform", "low": 0, "high": 2}}
}


# --- configs, concurrency, scheduling (no Ray) -----------------------------------------------------------------------
def test_trial_and_best_configs_keep_the_users_other_params(tmp_path):
    cfg = config_from_dict(sweep_config())
    trial = trial_config(cfg, {"l_u": 0.3, "l_a": 1.5})
    assert [s.key for s in trial.selectors] == ["lhas"]
    assert trial.selectors[0].params == {"knn": 16, "l_c": 0.5, "l_u": 0.3, "l_a": 1.5}
    best = best_config(cfg, {"l_u": 0.3, "l_a": 1.5})
    assert [s.key for s in best.selectors] == ["random", "lhas"]  # the baselines stay for a comparison run
    assert best.selectors[1].params["l_u"] == 0.3 and best.selectors[1].params["knn"] == 16
    with pytest.raises(ConfigError, match="tune.selector: 'random' is not an lhas selector"):
        tuned_selector(config_from_dict(sweep_config(selector="random")))


def test_concurrency_comes_from_cluster_resources():
    cfg = config_from_dict(sweep_config(max_concurrent=None))
    assert trial_concurrency(cfg, {"CPU": 2}) == 2  # one 1-CPU Train worker per trial
    assert trial_concurrency(cfg, {"CPU": 0.5}) == 1
    raw = sweep_config(max_concurrent=None)
    raw["training"].update(num_workers=2, use_gpu=True, cpus_per_worker=4)
    assert trial_concurrency(config_from_dict(raw), {"CPU": 64, "GPU": 6}) == 3  # GPUs are the limit
    assert trial_concurrency(config_from_dict(sweep_config(max_concurrent=5)), {"CPU": 1}) == 5


def test_asha_judges_after_every_stage_but_the_last():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from lhas_ray.tuning.sweep import _scheduler

    raw = sweep_config(scheduler="asha", grace_period=1, reduction_factor=2)
    raw["stages"] = [{**s, "name": f"s{i}"} for i, s in enumerate(raw["stages"] * 2)]
    raw["seeds"] = [0, 1]  # 8 stage units: rungs at units 1, 2, 4; unit 8 (the end) is no rung
    asha = _scheduler(config_from_dict(raw))
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "stages_done"
    assert [m for m, _ in asha._brackets[0]._rungs] == [4, 2, 1]
    raw.update(seeds=[0], stages=raw["stages"][:1])
    assert isinstance(_scheduler(config_from_dict(raw)), FIFOScheduler)  # one stage: nothing to stop early


def test_a_trial_asha_stopped_is_pruned_for_optuna_not_completed():
    """TPE must not take a stopped trial's objective after 1 of 4 stages for a final outcome."""
    import optuna

    from lhas_ray.tuning.sweep import _searcher

    raw = sweep_config(scheduler="asha")
    raw["stages"] = [{**s, "name": f"s{i}"} for i, s in enumerate(raw["stages"] * 2)]
    searcher = _searcher(config_from_dict(raw), parse_search_space(SPACE))
    searcher.set_search_properties(None, None, {})
    for trial_id in ("stopped", "finished", "crashed"):
        assert set(searcher.suggest(trial_id)) == {"l_u", "l_a"}
    searcher.on_trial_result("stopped", {"objective": 0.9, "stages_done": 1, "training_iteration": 1})
    searcher.on_trial_complete("stopped", {"objective": 0.9, "stages_done": 1, "training_iteration": 1})
    searcher.on_trial_complete("finished", {"objective": 0.4, "stages_done": 4, "training_iteration": 5})
    searcher.on_trial_complete("crashed", {"objective": 0.2, "stages_done": 2}, error=True)
    trials = searcher._ot_study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[0].intermediate_values == {1: 0.9} and trials[1].value == 0.4
    assert searcher._ot_study.best_trial.number == 1  # the stopped trial's higher partial score is not "best"


def test_a_bad_search_space_fails_before_any_trial_or_ray(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(sweep_config()))
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({"params": {"l_u": {"type": "loguniform", "low": 0, "high": 1}}}))
    out = tmp_path / "sweep"
    assert cli.main(["tune", str(cfg_path), "--space", str(space), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "params.l_u.low: must be > 0" in err and str(space) in err
    assert not out.exists()  # nothing was written, no trial started
    assert cli.main(["tune", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no sweep to resume" in capsys.readouterr().err
    bad_formula = ["tune", str(cfg_path), "--space", "lhas_default", "-o", str(out), "--set", "tune.objective=acc+x"]
    assert cli.main(bad_formula) == 2
    assert "tune.objective: unknown name 'x'" in capsys.readouterr().err and not out.exists()


# --- the sweep machinery with a stand-in protocol (no Train run) ------------------------------------------------------
def test_nan_objective_fails_that_trial_and_the_sweep_goes_on(ray_session, tmp_path):
    cfg = config_from_dict(sweep_config(trials=3, max_concurrent=3, objective="acc / acc", max_failures=1))
    space = parse_search_space({"params": {"l_u": {"type": "choice", "values": [0.5, 1.5]}}})
    out = "file://" + str(tmp_path / "sweep")  # a URI: the store and Tune both go through pyarrow.fs
    result = run_sweep(cfg, space, out, protocol=fake_protocol)
    t = result.trials.set_index("trial")
    assert len(t) == 3 and set(t["status"]) == {"failed", "completed"}
    failed = t[t["status"] == "failed"]
    assert (failed["param_l_u"] == 0.5).all() and failed["error"].str.contains("NaN").all()
    assert (t.loc[t["status"] == "completed", "objective"] == 1.0).all()
    assert result.best["param_l_u"] == 1.5
    best = load_config(str(tmp_path / "sweep" / "best_config.yaml"))
    assert best.selector("lhas").params == {"knn": 16, "l_c": 0.5, "l_u": 1.5}
    stored = pd.read_parquet(tmp_path / "sweep" / "trials.parquet")
    assert list(stored["trial"]) == sorted(stored["trial"]) and stored["trial_number"].tolist() == [1, 2, 3]


def _sleepy_train_loop(config: dict) -> None:
    time.sleep(600)


@pytest.mark.slow
def test_train_placement_groups_live_as_long_as_their_controller(ray_session, tmp_path):
    """Ray Train's placement-group cleaner asks the state API whether a run's controller is alive. Another Ray
    instance started on the same machine must not make it end a healthy run, and a trial that dies (ASHA stopped it)
    must give its Train run's CPUs back."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    @ray.remote(num_cpus=0)
    class Trial:
        def fit(self, storage: str) -> None:
            trainer = TorchTrainer(
                _sleepy_train_loop,
                scaling_config=ScalingConfig(num_workers=1),
                run_config=RunConfig(name="doomed", storage_path=storage),
            )
            trainer.fit()

    total = ray.cluster_resources()["CPU"]
    trial = Trial.remote()
    trial.fit.remote(str(tmp_path))
    deadline = time.time() + 120
    while ray.available_resources().get("CPU", 0) == total and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) < total, "the Train run never took its CPU"

    other = subprocess.Popen(  # another user's Ray on this machine, dashboard on its default port
        [sys.executable, "-c", "import ray, time; ray.init(num_cpus=1); print('up', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert other.stdout.readline().strip() == "up"
        time.sleep(6)  # the cleaner checks every second or so: several checks, and the run is still whole
        assert ray.available_resources().get("CPU", 0) < total, "a healthy Train run lost its placement group"
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()

    ray.kill(trial)
    deadline = time.time() + 90
    while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == total


# --- run: trajectory groups side by side as Tune trials ----------------------------------------------------------------
# --- a real sweep: killed mid-way, resumed, a Train worker killed and the trial retried -------------------------------
def _tune_state(out: str) -> dict[str, dict]:
    """Tune's saved state per trial name: status and failure counts."""
    states = {}
    for path in sorted(glob.glob(os.path.join(out, "_tune", "sweep", "experiment_state-*.json")))[-1:]:
        try:
            data = json.load(open(path))
        except (json.JSONDecodeError, OSError):
            return {}
        for trial_json, runtime_json in data["trial_data"]:
            trial, runtime = json.loads(trial_json), json.loads(runtime_json)
            states[trial["custom_dirname"]] = {"status": trial["status"], **runtime}
    return states


def _kill_train_worker_after(marker_glob: str, killed: list, deadline: float) -> None:
    """Once a unit matching marker_glob is committed, SIGKILL this Ray session's Train worker(s)."""
    import ray

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    while time.time() < deadline and not glob.glob(marker_glob):
        time.sleep(0.2)
    for p in raylet.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                p.kill()
                killed.append((p.pid, time.time()))
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def resumed_sweep(ray_session, tmp_path_factory):
    """Start `lhas-ray tune` (2 trials, one at a time), kill it once trial 2 has begun, resume with --resume OUT."""
    tmp = tmp_path_factory.mktemp("tune")
    cfg_path, space_path, out = tmp / "c.yaml", tmp / "space.yaml", str(tmp / "sweep")
    raw = sweep_config()
    raw["tracking"] = {"mlflow": {"tracking_uri": f"file://{tmp}/mlruns"}}  # Ray's MLflowLoggerCallback, per trial
    cfg_path.write_text(yaml.safe_dump(raw))
    space_path.write_text(yaml.safe_dump(SPACE))
    log = open(tmp / "first.log", "w")
    cmd = [sys.executable, "-m", "lhas_ray.cli", "tune", str(cfg_path), "--space", str(space_path), "-o", out]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    deadline = time.time() + 420
    try:
        while time.time() < deadline and proc.poll() is None:
            state = _tune_state(out)
            first_done = any(s["status"] == "TERMINATED" for s in state.values())
            if first_done and glob.glob(os.path.join(out, "trials", "t002_*", "_committed", "lhas__s0__t0.json")):
                break
            time.sleep(0.5)
    finally:
        kill_tree(proc.pid)
        proc.wait()
    state = _tune_state(out)
    assert [s["status"] for s in state.values()].count("TERMINATED") == 1, (
        state,
        open(tmp / "first.log").read()[-3000:],
    )
    first = next(name for name, s in state.items() if s["status"] == "TERMINATED")
    second = next(name for name in state if name != first)
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "trials", first, "_committed", "*.json"))}
    before[os.path.join(out, "_tune", "sweep", first, "result.json")] = 0.0
    before = {p: os.path.getmtime(p) for p in before}
    assert not os.path.exists(os.path.join(out, "trials", second, "_committed", "lhas__s0__t2.json"))

    killed: list = []
    marker = os.path.join(out, "trials", second, "_committed", "lhas__s0__t1.json")
    killer = threading.Thread(target=_kill_train_worker_after, args=(marker, killed, time.time() + 300), daemon=True)
    killer.start()
    started = time.time()
    code = cli.main(["tune", "--resume", out])
    killer.join(timeout=1)
    return {
        "out": out,
        "code": code,
        "first": first,
        "second": second,
        "before": before,
        "killed": killed,
        "resumed_at": started,
        "cfg_path": str(cfg_path),
        "first_log": str(tmp / "first.log"),
        "mlruns": f"file://{tmp}/mlruns",
    }


@pytest.mark.slow
def test_resumed_sweep_does_not_rerun_finished_trials(resumed_sweep):
    r = resumed_sweep
    assert r["code"] == 0
    for path, mtime in r["before"].items():  # the finished trial: not a file touched
        assert os.path.getmtime(path) == mtime, path
    trials = pd.read_parquet(os.path.join(r["out"], "trials.parquet"))
    assert trials["status"].tolist() == ["completed", "completed"]
    assert trials["trial"].tolist() == [r["first"], r["second"]]
    assert (trials["stages_done"] == 2).all() and trials["objective"].notna().all()
    assert {"param_l_u", "param_l_a", "immediate_score", "acc", "forgetting", "training_steps"} <= set(trials.columns)
    # the Optuna study is in OUT/optuna.journal: trial 1, told before the kill, and trial 2, told by the resumed
    # searcher, are one study's (what optuna-dashboard OUT/optuna.journal shows)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(os.path.join(r["out"], "optuna.journal")))
    study = optuna.load_study(study_name="micro", storage=journal)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    assert sorted(t.value for t in done) == pytest.approx(sorted(trials["objective"]))
    assert sorted(t.params["l_u"] for t in done) == pytest.approx(sorted(trials["param_l_u"]))


@pytest.mark.slow
def test_a_killed_train_worker_is_retried_and_the_trial_completes(resumed_sweep):
    r = resumed_sweep
    assert r["killed"], "no Train worker was found to kill"
    state = _tune_state(r["out"])[r["second"]]
    # Ray Train's FailureConfig restarted the worker group inside the trial: Tune never saw the trial fail
    assert state["status"] == "TERMINATED" and state["num_failures"] == 0
    last = os.path.join(r["out"], "trials", r["second"], "_committed", "lhas__s0__t2.json")
    assert os.path.getmtime(last) > r["killed"][0][1]  # stage 2 was committed by the restarted workers
    timings = ResultStore(os.path.join(r["out"], "trials", r["second"])).read_table("timings").to_pandas()
    starts = timings[timings.phase == "worker_start"].stage.tolist()
    assert starts == [0, 1]  # the first run's start-up, then the resumed one's at its first unit; a restart books none


@pytest.mark.slow
def test_every_stage_reaches_tune_and_the_outputs_are_complete(resumed_sweep):
    r = resumed_sweep
    out = r["out"]
    progress = pd.read_json(os.path.join(out, "_tune", "sweep", r["first"], "result.json"), lines=True)
    assert progress["stages_done"].tolist() == [1, 2, 2]  # after each stage (what ASHA judges), then the end
    assert progress["objective"].notna().all()
    pareto = pd.read_parquet(os.path.join(out, "pareto.parquet"))
    assert 1 <= len(pareto) <= 2 and set(pareto["trial"]) <= {r["first"], r["second"]}
    best = load_config(os.path.join(out, "best_config.yaml"))  # `lhas-ray run` accepts it as is
    assert [s.key for s in best.selectors] == ["random", "lhas"] and best.selector("lhas").params["knn"] == 16
    assert cli.main(["validate", os.path.join(out, "best_config.yaml")]) == 0
    page = open(os.path.join(out, "report.html")).read()
    assert "<section id='tuning'>" in page and r["first"] in page
    for trial in (r["first"], r["second"]):  # each trial is a full run folder
        assert ResultStore(os.path.join(out, "trials", trial)).is_run()
    phases = {
        t: set(ResultStore(os.path.join(out, "trials", t)).read_table("timings").to_pandas()["phase"])
        for t in (r["first"], r["second"])
    }
    assert "warmup" in phases[r["first"]] and "warmup" not in phases[r["second"]]  # the base was shared
    console = open(r["first_log"]).read()  # what `lhas-ray tune` printed before it was killed: its own lines only
    assert console.startswith("lhas-ray tune micro: 2 trials") and f"trial {r['first']}: seed 0 stage 1 done" in console
    for noise in ("Configuration for experiment", "Trial status", "Reporting training result", "View detailed results"):
        assert noise not in console, noise
    assert "Configuration for experiment" in open(os.path.join(out, "logs", "driver.log")).read()
    assert not math.isnan(pd.read_parquet(os.path.join(out, "trials.parquet"))["objective"].iloc[0])


@pytest.mark.slow
def test_each_trial_is_an_mlflow_run_through_rays_callback(resumed_sweep):
    """tracking.mlflow in a sweep: Ray's MLflowLoggerCallback logs every trial (its params and reported results)."""
    from mlflow.tracking import MlflowClient

    r = resumed_sweep
    client = MlflowClient(tracking_uri=r["mlruns"])
    experiment = client.get_experiment_by_name("micro-sweep")
    runs = client.search_runs([experiment.experiment_id])
    by_trial = {run.data.tags.get("trial_name", ""): run for run in runs}
    assert {r["first"], r["second"]} <= set(by_trial), sorted(by_trial)
    first = by_trial[r["first"]]
    assert {"l_u", "l_a"} <= set(first.data.params)
    history = client.get_metric_history(first.info.run_id, "objective")
    assert len(history) == 3 and all(not math.isnan(m.value) for m in history)  # after each stage, then the end


@pytest.mark.slow
def test_tune_confirms_on_heldout_seeds_and_the_confirm_config_reproduces_it(resumed_sweep, tmp_path):
    out = resumed_sweep["out"]
    assert resumed_sweep["code"] == 0
    base, held = ResultStore(os.path.join(out, "baselines")), ResultStore(os.path.join(out, "confirm"))
    assert {(u.selector, u.seed) for u in base.committed_units()} == {("random", 0)}  # the development seed
    assert {(u.selector, u.seed) for u in held.committed_units()} == {("lhas_tuned", 9), ("random", 9)}
    table = pd.read_parquet(os.path.join(out, "confirmation.parquet"))
    heldout = table[table["sample"] == "held-out"]
    assert set(heldout["baseline"]) == {"random"} and heldout["n_seeds"].max() == 1
    assert heldout.loc[heldout["family"] == "headline", "n_seeds"].tolist() == [1]
    assert heldout["p_raw"].isna().all()  # one held-out seed: described, never tested
    assert "<section id='confirmation'>" in open(os.path.join(out, "report.html")).read()
    assert "held-out" in open(os.path.join(out, "confirm", "report.md")).read()

    # best_config.yaml + confirmation, as the user would rerun it; its two trajectories as two groups side by side
    # (Tune trials, one Train run each: where a run runs is not part of its identity, nor of its numbers)
    rerun = str(tmp_path / "rerun")
    argv = ["run", os.path.join(out, "confirm_config.yaml"), "-o", rerun, "--no-report"]
    assert cli.main([*argv, "--set", "ray.concurrent_trajectories=2"]) == 0
    (experiment,) = glob.glob(os.path.join(rerun, "_tune", "groups-*"))
    assert len(glob.glob(os.path.join(experiment, "*", "result.json"))) == 2
    cols = ["selector", "seed", "stage", "eval_set", "skill", "metric"]

    def metrics(path: str) -> pd.DataFrame:
        df = ResultStore(path).read_table("metrics").to_pandas()
        return df.sort_values(cols).reset_index(drop=True)[[*cols, "value"]]

    pd.testing.assert_frame_equal(metrics(rerun), metrics(held.uri))


def test_only_a_head_with_an_autoscaler_is_taken_for_one(ray_session):
    """Every head's monitor writes load metrics; only an autoscaling one adds a report (the local instance's does
    not, so `lhas-ray tune` there must not warn that an autoscaler's maximum is unknown)."""
    from ray.experimental.internal_kv import _internal_kv_get

    from lhas_ray.tuning.capacity import V1_STATUS_KEY, _has_v1_autoscaler, autoscaler_in_status

    def status(mapping: dict | None) -> bytes:
        base = {"time": 1.0, "monitor_pid": 7, "load_metrics_report": {}}
        return json.dumps(
            base if mapping is None else {**base, "autoscaler_report": {"node_type_mapping": mapping}}
        ).encode()

    assert not autoscaler_in_status(status(None))  # the monitor before its first update
    assert not autoscaler_in_status(status({"ab12": "node_ab12"}))  # a laptop: Ray's read-only provider
    assert autoscaler_in_status(status({"ab12": "ray.head.default", "cd34": "cpu_worker"}))  # node types of a config
    assert not autoscaler_in_status(None) and not autoscaler_in_status(b"not json")
    deadline = time.time() + 60
    while b"autoscaler_report" not in (_internal_kv_get(V1_STATUS_KEY) or b"") and time.time() < deadline:
        time.sleep(0.5)  # this session's monitor has run its read-only autoscaler at least once
    assert b"autoscaler_report" in _internal_kv_get(V1_STATUS_KEY) and not _has_v1_autoscaler()


def test_an_autoscaling_clusters_size_comes_from_its_ray_up_config(tmp_path):
    """Ray's v1 autoscaler publishes no maximum: the config `ray up` leaves on the head sizes the sweep."""
    from lhas_ray.tuning.capacity import config_max_resources, max_cluster_resources

    aws = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "clusters", "aws.yaml")))
    # by hand: a CPU-less head, plus gpu_spot's {CPU: 4, GPU: 1} times its max_workers 8 (the cluster's cap is 8)
    assert config_max_resources(aws) == {"CPU": 32.0, "GPU": 8.0}
    capped = {**aws, "max_workers": 3}
    assert config_max_resources(capped) == {"CPU": 12.0, "GPU": 3.0}
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(aws))
    resources, source = max_cluster_resources(str(path))  # no Ray here: nothing published, the file decides
    assert resources == {"CPU": 32.0, "GPU": 8.0} and str(path) in source
    raw = sweep_config(max_concurrent=None)
    raw["training"].update(num_workers=2, use_gpu=True, cpus_per_worker=4)
    assert trial_concurrency(config_from_dict(raw), resources) == 4  # 8 GPUs / 2 per trial
