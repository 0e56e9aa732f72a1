"""Trajectories as Ray Tune trials: ``lhas-ray tune`` (Optuna over the LHAS weights) and ``run``'s side-by-side groups.

One function trainable serves both. Each trial launches its own Train run (Train V2: ``TorchTrainer.fit()`` inside
the trial, its reports forwarded to Tune by a ``TuneReportCallback``), so the trial itself holds no CPU and the
number of trials at once comes from the cluster's resources. In a sweep, a trial is one whole protocol run of the
``lhas`` selector with the trial's weights, in its own run folder; after every committed stage it reports the
objectives computed from that folder (search_space.py: formulas over the trajectory metrics), so ASHA can stop poor
trials early. A trial whose objective is NaN fails; a dead Train worker is restarted by Ray Train inside the trial
(``training.max_failures``), a trial that fails anyway is retried by Tune (``tune.max_failures``), and either way it
resumes from its last committed stage. An interrupted sweep resumes with ``Tuner.restore``; finished trials are not rerun.

A sweep's OUT (a local path, a shared filesystem, ``file://``, ``s3://`` or ``gs://``: everything goes through the
results store and ``pyarrow.fs``)::

    OUT/sweep.yaml             what was asked: the base config, the search space, the number of trials
    OUT/trials/<trial_name>/   one full run folder per trial (``lhas-ray report`` works on it)
    OUT/_tune/sweep/           Tune's experiment state, for Tuner.restore
    OUT/trials.parquet         one row per trial: params, objectives, metrics, status, stages done, training steps
    OUT/pareto.parquet         completed trials no other completed trial beats on both immediate and objective
    OUT/importances.parquet    Optuna's fANOVA importance of each parameter for each objective
    OUT/best_config.yaml       the user's config with the best weights: ``lhas-ray run`` accepts it as is
    OUT/config.yaml, OUT/metrics.parquet/, ...  the best ``tune.report_top`` completed trials as one run (one
                               selector per trial), so ``lhas-ray report OUT`` compares them and adds the tuning section
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import yaml
from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from lhas_ray.config import ConfigError, ExperimentConfig, SelectorConfig, config_from_dict, dump_config
from lhas_ray.evaluation.metrics import METRICS, read_long_tables, trajectory_metrics
from lhas_ray.protocol import (
    RunData,
    build_suites,
    ensure_same_run,
    fit_group,
    init_ray,
    quiet_libraries,
    run_data,
    trajectory_groups,
)
from lhas_ray.search_space import (
    SearchSpace,
    param_importances,
    pareto_mask,
    parse_formula,
    parse_search_space,
    stage_scores,
)
from lhas_ray.selection import get_selector
from lhas_ray.store import TABLES, ResultStore, Unit
from lhas_ray.training.checkpoint import checkpoint_path

log = logging.getLogger("lhas_ray.tuning")

SWEEP_SPEC = "sweep.yaml"
TUNE_DIR, EXPERIMENT = "_tune", "sweep"
OBJECTIVE, IMMEDIATE = "objective", "immediate_score"
STAGES_DONE = "stages_done"
TRIAL_MEMORY = 256 * 1024**2  # bytes a trial (the driver of its Train run) reserves; it reserves no CPU


class NonFiniteObjective(RuntimeError):
    """A trial whose objective came out NaN: Tune marks it failed and the sweep goes on."""


# --- configs of trials -----------------------------------------------------------------------------------------------
def child_uri(out: str, *parts: str) -> str:
    """A path under ``out`` that every process can open: absolute for local paths, the same scheme for URIs."""
    if "://" in out:
        return posixpath.join(out.rstrip("/"), *parts)
    return os.path.join(os.path.abspath(out), *parts)


def tuned_selector(cfg: ExperimentConfig) -> SelectorConfig:
    """The lhas selector whose other params every trial keeps: tune.selector, else the first lhas, else defaults."""
    if cfg.tune.selector is not None:
        match = [s for s in cfg.selectors if s.key == cfg.tune.selector]
        if not match or match[0].name != "lhas":
            lhas = [s.key for s in cfg.selectors if s.name == "lhas"]
            raise ConfigError(
                f"tune.selector: {cfg.tune.selector!r} is not an lhas selector of this config (lhas selectors: {lhas})"
            )
        return match[0]
    return next((s for s in cfg.selectors if s.name == "lhas"), SelectorConfig(name="lhas"))


def trial_config(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """The experiment one trial runs: the tuned lhas selector alone, with the trial's params over the user's."""
    base = tuned_selector(cfg)
    raw = cfg.model_dump(mode="json")
    raw["selectors"] = [{"name": "lhas", "params": {**base.params, **params}, "label": base.label}]
    raw["output"] = None
    raw["tune"]["heldout_seeds"] = []  # a trial runs lhas alone; the sweep's confirmation is the sweep's business
    return config_from_dict(raw, source="trial config")


def best_config(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """The user's config with the tuned lhas selector's params set to ``params`` (added if the config had none)."""
    base = tuned_selector(cfg)
    raw = cfg.model_dump(mode="json")
    tuned = {"name": "lhas", "params": {**base.params, **params}, "label": base.label}
    keys = [s.key for s in cfg.selectors]
    if base.key in keys:
        raw["selectors"][keys.index(base.key)] = tuned
    else:
        raw["selectors"].append(tuned)
    raw["output"] = None
    return config_from_dict(raw, source="best config")


# --- scores of a trial, read back from its run folder ----------------------------------------------------------------
def objective_names(cfg: ExperimentConfig) -> list[str]:
    """The metrics Optuna maximises: the long-horizon objective, and the immediate score when multi-objective."""
    return [IMMEDIATE, OBJECTIVE] if cfg.tune.multi_objective else [OBJECTIVE]


def trial_scores(store: ResultStore, cfg: ExperimentConfig, upto: tuple[int, int] | None = None) -> dict[str, float]:
    """Objectives and metrics at each seed's latest committed stage (mean over seeds), and the stages committed.

    ``upto=(seed, stage)`` scores the trial as it stood when that unit was committed (seeds run in ``cfg.seeds``
    order), so every report, and ASHA's judgement of it, is about the same point of every trial.
    """
    formulas = {OBJECTIVE: parse_formula(cfg.tune.objective), IMMEDIATE: parse_formula(cfg.tune.immediate)}
    empty = {OBJECTIVE: math.nan, IMMEDIATE: math.nan, STAGES_DONE: 0}
    metrics, curves, _ = read_long_tables(store)
    if metrics is not None and upto is not None:
        metrics, curves = (_as_of(df, cfg, *upto) if df is not None else None for df in (metrics, curves))
    if metrics is None or not (metrics["stage"] > 0).any():
        return empty
    ev = cfg.evaluation
    traj = trajectory_metrics(
        metrics,
        curves,
        lca_beta=ev.lca_beta,
        threshold=ev.probe_threshold,
        censor_at=cfg.probe.steps + 1,
        forgetting=ev.forgetting,
    )
    if traj.empty:
        return empty
    scores = stage_scores(traj, formulas)
    latest = scores.groupby(level="seed").tail(1)
    out = {k: float(v) for k, v in latest.mean(skipna=False).items()}
    out[STAGES_DONE] = len(scores)
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


# --- the one function trainable ---------------------------------------------------------------------------------------
def trajectory_trainable(config: dict, *, plan: dict, data: RunData) -> None:
    """A Tune trial: one group of ``run``'s trajectories (config['group']), or one sweep trial (config = its params)."""
    cfg = ExperimentConfig.model_validate(plan["cfg"])
    if plan["mode"] == "groups":
        i = int(config["group"])
        group = [tuple(t) for t in plan["groups"][i]]
        fixed = plan["fixed"] if i == 0 else {}
        fit_group(cfg, plan["out"], data, group, fixed, name=f"{cfg.name}-group{i}", callbacks=[TuneReportCallback()])
        return
    _sweep_trial(cfg, dict(config), plan, data)


def _sweep_trial(base: ExperimentConfig, params: dict, plan: dict, data: RunData) -> None:
    """Run (or resume) one trial's protocol in OUT/trials/<trial_id>, report its objectives, fail on NaN."""
    cfg = trial_config(base, params)
    get_selector("lhas", **cfg.selectors[0].params)  # bad weights fail here, before a Train run starts
    trial_id = tune.get_context().get_trial_name()
    out = child_uri(plan["out"], "trials", trial_id)
    store = ResultStore(out)
    ensure_same_run(store, cfg)
    share_base(plan["out"], store, cfg)
    pending = [t for group in trajectory_groups(cfg, store) for t in group]
    if pending:
        protocol: Callable = plan.get("protocol") or fit_group
        protocol(cfg, out, data, pending, {}, name=f"trial-{trial_id}", callbacks=[ObjectiveReportCallback(out, cfg)])
    result = trial_scores(store, cfg)
    tune.report(result)
    bad = [k for k in objective_names(cfg) if math.isnan(result[k])]
    if bad:
        raise NonFiniteObjective(
            f"trial {trial_id}: {', '.join(bad)} is NaN (check the formula in tune.objective/immediate)"
        )


def share_base(sweep_out: str, store: ResultStore, cfg: ExperimentConfig) -> None:
    """Copy each seed's base checkpoint from a trial that has committed it: trials differ only in the selector's
    params, so their warm-up makes the same model; later trials skip it. Copied under a temporary name, then moved;
    any failure leaves the trial to make its own."""
    trials = ResultStore(child_uri(sweep_out, "trials"))
    for seed in cfg.seeds:
        rel = checkpoint_path("", seed, 0)
        if store.exists(rel, "config.json"):
            continue
        for name in trials.listdir():
            src = ResultStore(child_uri(sweep_out, "trials", name))
            done = src.is_committed(Unit(cfg.selectors[0].key, seed, 0)) and src.exists(rel, "config.json")
            if src.root == store.root or not done:
                continue
            tmp = f"{store.path(rel)}.tmp-{uuid.uuid4().hex}"
            try:
                store.fs.create_dir(tmp, recursive=True)
                pafs.copy_files(src.path(rel), tmp, source_filesystem=src.fs, destination_filesystem=store.fs)
                store.fs.move(tmp, store.path(rel))
            except OSError as e:
                log.warning("trial %s: could not share the base checkpoint of seed %d (%s)", store.uri, seed, e)
                continue
            log.info("trial %s: base checkpoint of seed %d shared from %s", store.uri, seed, name)
            break


def _trainable(plan: dict, data: RunData):
    """The trainable handed to Tune: parameters in the object store, no CPU of its own (its Train run has them).

    Tune needs some resource per trial, so the trial asks for the memory of its driver process (256 MiB) only.
    """
    with_params = tune.with_parameters(trajectory_trainable, plan=plan, data=data)
    return tune.with_resources(with_params, {"CPU": 0, "memory": TRIAL_MEMORY})


# --- how many at once -------------------------------------------------------------------------------------------------
def max_cluster_resources() -> dict[str, float]:
    """The cluster's resources at its largest: the autoscaler's maximum if it has one, else what is there now."""
    try:
        from ray._private.state import state

        biggest = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 (a private API: any failure means "no autoscaler information")
        biggest = None
    return dict(biggest) if biggest else dict(ray.cluster_resources())


def trial_concurrency(cfg: ExperimentConfig, resources: dict[str, float] | None = None) -> int:
    """Trials at once: tune.max_concurrent, else as many Train runs (workers x CPUs/GPUs each) as the cluster fits."""
    if cfg.tune.max_concurrent:
        return cfg.tune.max_concurrent
    res = resources if resources is not None else max_cluster_resources()
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


def _tune_callbacks() -> list:
    """Tune's default loggers minus TensorBoard.

    A trial that ASHA stops takes its Train controller with it; Ray Train's own placement-group cleaner (which asks
    the dashboard's state API, so init_ray starts the dashboard) frees the CPUs/GPUs that controller's run held.
    """
    return [_NoTensorBoard()]


def _tune_storage(store: ResultStore) -> tuple[str, pafs.FileSystem | None]:
    """Tune's storage_path (and filesystem for object stores) under the store's folder."""
    local = store.local_path(TUNE_DIR)
    return (local, None) if local else (store.path(TUNE_DIR), store.fs)


# --- run: trajectory groups side by side --------------------------------------------------------------------------------
def run_groups_with_tune(cfg: ExperimentConfig, out: str, data: RunData, groups: list, fixed_costs: dict) -> None:
    """Run ``run``'s trajectory groups as concurrent Tune trials (one Train run each); raise if any group failed."""
    out = child_uri(out)
    plan = {"mode": "groups", "cfg": cfg.model_dump(mode="json"), "out": out, "groups": groups, "fixed": fixed_costs}
    storage, fs = _tune_storage(ResultStore(out))
    tuner = tune.Tuner(
        _trainable(plan, data),
        param_space={"group": tune.grid_search(list(range(len(groups))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=min(len(groups), trial_concurrency(cfg))),
        run_config=tune.RunConfig(
            name=f"groups-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            callbacks=_tune_callbacks(),
            verbose=0,
        ),
    )
    errors = tuner.fit().errors
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(groups)} trajectory groups failed; first error: {errors[0]}")


# --- tune: the sweep ------------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What a sweep produced: the trials table, the Pareto set and the best trial's row (None if no trial completed)."""

    out: str
    trials: pd.DataFrame
    pareto: pd.DataFrame
    best: pd.Series | None


def sweep_spec(cfg: ExperimentConfig, space: SearchSpace, trials: int) -> dict:
    """What a sweep folder records about what was asked, compared on every rerun."""
    return {"config": cfg.model_dump(mode="json"), "space": space.raw, "trials": int(trials)}


def load_sweep(out: str) -> tuple[ExperimentConfig, SearchSpace, int]:
    """The config, search space and trial count an existing sweep folder was started with (for ``--resume OUT``)."""
    store = ResultStore(out)
    if not store.exists(SWEEP_SPEC):
        raise ValueError(f"{out} holds no sweep to resume (no {SWEEP_SPEC}); start one with `lhas-ray tune CONFIG ...`")
    spec = yaml.safe_load(store.read_bytes(SWEEP_SPEC))
    cfg = config_from_dict(spec["config"], source=store.path(SWEEP_SPEC))
    return cfg, parse_search_space(spec["space"], store.path(SWEEP_SPEC)), int(spec["trials"])


def _claim_folder(store: ResultStore, spec: dict, resume: bool) -> bool:
    """Record the sweep in OUT, or check that OUT holds this very sweep; True when it already did."""
    if store.exists(SWEEP_SPEC):
        if yaml.safe_load(store.read_bytes(SWEEP_SPEC)) != yaml.safe_load(yaml.safe_dump(spec)):
            raise ValueError(
                f"{store.uri} already holds a sweep with a different config, search space or trial count; use a fresh "
                "--output, or `lhas-ray tune --resume OUT` to continue that sweep as it was started"
            )
        return True
    if resume:
        raise ValueError(f"{store.uri} holds no sweep to resume (no {SWEEP_SPEC})")
    if store.is_run() or store.exists("trials"):
        raise ValueError(f"{store.uri} already holds results that are not a sweep; use a fresh --output")
    store.write_bytes(SWEEP_SPEC, yaml.safe_dump(spec, sort_keys=False).encode())
    return False


def trial_name(trial) -> str:
    """``t<number>_<trial_id>``: the trial's place in the sweep (kept across restores), then Tune's unique id."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"t{int(number):03d}_{trial.trial_id}" if number.isdigit() else str(trial.trial_id)


def _scheduler(cfg: ExperimentConfig):
    """ASHA on the objective, one rung per committed stage (the last stage is never a rung: stopping saves nothing)."""
    units = len(cfg.seeds) * len(cfg.stages)
    if cfg.tune.scheduler == "fifo" or units < 2:
        return FIFOScheduler()
    max_t = units - 1
    return ASHAScheduler(
        time_attr=STAGES_DONE,
        metric=OBJECTIVE,
        mode="max",
        max_t=max_t,
        grace_period=min(cfg.tune.grace_period, max_t),
        reduction_factor=cfg.tune.reduction_factor,
        stop_last_trials=False,
    )


class StagewiseOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial ASHA stopped was PRUNED (and a failed one FAIL), not COMPLETE with its
    partial objective.

    A stopped trial's last report scores fewer stages than a finished one (its objective is another quantity: no
    forgetting yet at stage 1, say); told as complete, TPE would model it as a final outcome. As PRUNED, TPE ranks it
    below every completed trial and, among pruned ones, by how far it got (its intermediate values are kept).
    """

    def __init__(self, *args, total_stages: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.total_stages = total_stages

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A result short of the last stage is a stopped trial: no value (Optuna: PRUNED). A failed trial: no value
        either (Optuna: FAIL; OptunaSearch would tell its last partial objective as a COMPLETE value)."""
        partial = bool(result) and int(result.get(STAGES_DONE, 0)) < self.total_stages
        super().on_trial_complete(trial_id, None if (partial or error) else result, error)


def _searcher(cfg: ExperimentConfig, space: SearchSpace) -> OptunaSearch:
    """Optuna's TPE, seeded, over the space; multi-objective (immediate, objective) when configured."""
    import optuna

    names = objective_names(cfg)
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.seed, n_startup_trials=cfg.tune.startup_trials)
    metric = names if len(names) > 1 else names[0]
    mode = ["max"] * len(names) if len(names) > 1 else "max"
    return StagewiseOptunaSearch(
        space=space.distributions(),
        metric=metric,
        mode=mode,
        sampler=sampler,
        total_stages=len(cfg.seeds) * len(cfg.stages),
    )


def run_sweep(
    cfg: ExperimentConfig,
    space: SearchSpace,
    out: str,
    *,
    trials: int | None = None,
    address: str | None = None,
    resume: bool = False,
    protocol: Callable | None = None,
) -> SweepResult:
    """Run (or resume) a sweep of ``trials`` trials into ``out`` and write its tables and best config."""
    n_trials = trials or cfg.tune.trials
    tuned_selector(cfg)  # a bad tune.selector fails before Ray starts
    out = child_uri(out)
    store = ResultStore(out)
    started = _claim_folder(store, sweep_spec(cfg, space, n_trials), resume)
    suites = build_suites(cfg)  # bad data settings fail here, before Ray starts
    init_ray(cfg, address)
    quiet_libraries()
    plan = {"mode": "sweep", "cfg": cfg.model_dump(mode="json"), "out": out, "protocol": protocol}
    trainable = _trainable(plan, run_data(cfg, suites))
    storage, fs = _tune_storage(store)
    experiment = posixpath.join(storage, EXPERIMENT)
    if started and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log.info("resuming the sweep in %s (finished trials are kept, unfinished ones continue)", out)
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(cfg, space),
                scheduler=_scheduler(cfg),
                num_samples=n_trials,
                max_concurrent_trials=trial_concurrency(cfg),
                # FIFO: a trial process imports torch/DeepSpeed once, not once per trial. Never with ASHA: a stopped
                # trial's process must end, or its Train run lives on and holds the resources the next trial needs.
                reuse_actors=cfg.tune.scheduler == "fifo",
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=storage,
                storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                callbacks=_tune_callbacks(),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    return write_sweep_outputs(cfg, space, out, _trial_rows(cfg, out, grid))


def _trial_rows(cfg: ExperimentConfig, out: str, grid) -> list[dict]:
    """One row per Tune trial, scored from its run folder (the source of truth), with Tune's error if it failed."""
    rows = []
    for result in grid:
        trial_id = posixpath.basename(str(result.path).rstrip("/"))
        rows.append({"trial_id": trial_id, "params": dict(result.config or {}), "error": result.error})
    return [_score_row(cfg, out, r["trial_id"], r["params"], r["error"]) for r in rows]


def _score_row(cfg: ExperimentConfig, out: str, trial_id: str, params: dict, error) -> dict:
    """The trials.parquet row of one trial."""
    head = trial_id.split("_", 1)[0]
    row: dict = {"trial": trial_id, "trial_number": int(head[1:]) if head[1:].isdigit() else -1}
    row.update({f"param_{k}": v for k, v in sorted(params.items())})
    store = ResultStore(child_uri(out, "trials", trial_id))
    try:
        tcfg = trial_config(cfg, params)
        scores = (
            trial_scores(store, tcfg) if store.is_run() else {OBJECTIVE: math.nan, IMMEDIATE: math.nan, STAGES_DONE: 0}
        )
        steps = training_steps(store, tcfg) if store.is_run() else 0
    except (ValueError, KeyError) as e:
        scores, steps = {OBJECTIVE: math.nan, IMMEDIATE: math.nan, STAGES_DONE: 0}, 0
        error = error or e
    expected = len(cfg.seeds) * len(cfg.stages)
    if error is not None:
        status = "failed"
    elif any(math.isnan(scores.get(k, math.nan)) for k in objective_names(cfg)):
        status = "failed"
        error = "objective is NaN"
    elif scores.get(STAGES_DONE, 0) < expected:
        status = "stopped"
    else:
        status = "completed"
    row.update({OBJECTIVE: scores.get(OBJECTIVE, math.nan), IMMEDIATE: scores.get(IMMEDIATE, math.nan)})
    row.update({m: scores.get(m, math.nan) for m in METRICS})
    row.update(
        {
            "status": status,
            STAGES_DONE: int(scores.get(STAGES_DONE, 0)),
            "training_steps": int(steps),
            "run": f"trials/{trial_id}",
            "error": "" if error is None else str(error).strip().splitlines()[-1][:500],
        }
    )
    return row


def write_sweep_outputs(cfg: ExperimentConfig, space: SearchSpace, out: str, rows: list[dict]) -> SweepResult:
    """trials.parquet, pareto.parquet, importances.parquet, best_config.yaml and the top trials as one run."""
    store = ResultStore(out)
    trials = pd.DataFrame(rows).sort_values("trial_number", kind="stable").reset_index(drop=True)
    store.write_parquet("trials.parquet", pa.Table.from_pandas(trials, preserve_index=False))
    done = trials[trials["status"] == "completed"]
    front = done[pareto_mask(done[[IMMEDIATE, OBJECTIVE]].to_numpy())] if len(done) else done
    store.write_parquet("pareto.parquet", pa.Table.from_pandas(front.reset_index(drop=True), preserve_index=False))
    imp = [
        pd.DataFrame({"param": s.index, "objective": name, "importance": s.to_numpy()})
        for name in objective_names(cfg)
        if not (s := param_importances(trials, name, seed=cfg.tune.seed)).empty
    ]
    if imp:
        store.write_parquet(
            "importances.parquet", pa.Table.from_pandas(pd.concat(imp, ignore_index=True), preserve_index=False)
        )
    best = None
    if len(done):
        pool = front if cfg.tune.multi_objective else done
        best = pool.loc[pool[OBJECTIVE].idxmax()]
        params = {c.removeprefix("param_"): _plain(best[c]) for c in trials.columns if c.startswith("param_")}
        text = (
            f"# Best trial {best['trial']} of the sweep in {out}: {OBJECTIVE} = {best[OBJECTIVE]:.4f} "
            f"({cfg.tune.objective}), {IMMEDIATE} = {best[IMMEDIATE]:.4f} ({cfg.tune.immediate}).\n"
            f"# Run it with: lhas-ray run best_config.yaml --output OUT\n"
        )
        store.write_bytes("best_config.yaml", (text + dump_config(best_config(cfg, params))).encode())
        write_sweep_run(cfg, out, done.nlargest(cfg.tune.report_top, OBJECTIVE))
    return SweepResult(out, trials, front.reset_index(drop=True), best)


def _plain(v):
    """A numpy scalar as the Python value YAML writes plainly."""
    return v.item() if hasattr(v, "item") else v


def write_sweep_run(cfg: ExperimentConfig, out: str, top: pd.DataFrame) -> None:
    """Make OUT a run of the top trials, one lhas selector labelled by trial id each, so the report compares them."""
    store = ResultStore(out)
    params_cols = [c for c in top.columns if c.startswith("param_")]
    base = tuned_selector(cfg)
    selectors = [
        {
            "name": "lhas",
            "label": row.trial,
            "params": {**base.params, **{c.removeprefix("param_"): _plain(getattr(row, c)) for c in params_cols}},
        }
        for row in top.itertuples(index=False)
    ]
    raw = cfg.model_dump(mode="json")
    raw.update({"name": f"{cfg.name}-sweep", "selectors": selectors, "output": None})
    raw["tune"]["heldout_seeds"] = []  # the top trials side by side; the report knows a sweep by trials.parquet
    agg = config_from_dict(raw, source="sweep run")
    labels = {s["label"] for s in selectors}
    for key in store.committed_keys():  # trials that dropped out of the top since the last time
        if key.split("__")[0] not in labels:
            store.fs.delete_file(store.path("_committed", f"{key}.json"))
    store.write_bytes("config.yaml", dump_config(agg).encode())
    for trial_id in top["trial"]:
        src = ResultStore(child_uri(out, "trials", trial_id))
        for unit in src.committed_units():
            dest = Unit(trial_id, unit.seed, unit.stage)
            if store.is_committed(dest):
                continue
            for name in TABLES:
                part = f"{name}.parquet/{unit.key}.parquet"
                if src.exists(part):
                    table = src.read_parquet(part)
                    idx = table.column_names.index("selector")
                    table = table.set_column(idx, "selector", pa.array([trial_id] * table.num_rows, pa.string()))
                    store.write_part(name, dest, table)
            store.commit(dest)


def sweep_summary(result: SweepResult, cfg: ExperimentConfig) -> str:
    """The closing text of ``lhas-ray tune``: counts by status, the best trial, the Pareto set."""
    t = result.trials
    counts = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    lines = [f"{len(t)} trials: {counts} (in-sample: every number below is on the development seeds {cfg.seeds})"]
    cols = ["trial", "status", STAGES_DONE, OBJECTIVE, IMMEDIATE] + [c for c in t.columns if c.startswith("param_")]
    lines.append(t[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.best is not None:
        lines.append(f"\nbest trial: {result.best['trial']} ({OBJECTIVE} = {result.best[OBJECTIVE]:.4f})")
        lines.append(f"best config: {child_uri(result.out, 'best_config.yaml')}")
        lines.append(f"Pareto set ({IMMEDIATE} vs {OBJECTIVE}): {', '.join(result.pareto['trial'])}")
    else:
        lines.append("\nno trial completed: no best config was written")
    lines.append(f"(objective = {cfg.tune.objective}; immediate_score = {cfg.tune.immediate})")
    return "\n".join(lines)
