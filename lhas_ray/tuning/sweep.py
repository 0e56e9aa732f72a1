"""``lhas-ray tune``: Optuna (TPE) through Ray Tune over the LHAS weights, one whole protocol run per trial.

In a sweep, a trial is one whole protocol run of the ``lhas`` selector with the trial's weights, in its own run
folder; after every committed stage it reports the objectives computed from that folder (``scores.py``), so ASHA can
stop poor trials early. A trial whose objective is NaN fails; a dead Train worker is restarted by Ray Train inside the
trial (``training.max_failures``), a trial that fails anyway is retried by Tune (``tune.max_failures``), and either
way it resumes from its last committed stage. An interrupted sweep resumes with ``Tuner.restore``; finished trials are
not rerun. The sweep folder's layout: ``lhas_ray/tuning/__init__.py``."""

from __future__ import annotations

import functools
import logging
import math
import posixpath
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from lhas_ray.config import ExperimentConfig, config_from_dict
from lhas_ray.console import library_prints, log_to_folder
from lhas_ray.launch import RunData, build_suites, ensure_same_run, fit_group, init_ray, run_data, trajectory_groups
from lhas_ray.progress import quiet_libraries
from lhas_ray.selection import get_selector
from lhas_ray.store import ResultStore, Unit
from lhas_ray.training.checkpoint import checkpoint_path
from lhas_ray.tuning.capacity import max_cluster_resources
from lhas_ray.tuning.configs import trial_config, tuned_selector
from lhas_ray.tuning.results import SweepResult, _trial_rows, write_sweep_outputs
from lhas_ray.tuning.scores import (
    OBJECTIVE,
    SCORE,
    STAGES_DONE,
    NonFiniteObjective,
    ObjectiveReportCallback,
    objective_names,
    trial_scores,
)
from lhas_ray.tuning.space import SearchSpace, parse_search_space
from lhas_ray.tuning.trials import (
    TrialLines,
    child_uri,
    trial_concurrency,
    trial_name,
    trial_resources,
    tune_callbacks,
    tune_storage,
)

SWEEP_SPEC = "sweep.yaml"
OPTUNA_JOURNAL = "optuna.journal"  # the sweep's Optuna study (journal file storage), for optuna-dashboard
EXPERIMENT = "sweep"
log = logging.getLogger("lhas_ray.tuning")


def sweep_trainable(config: dict, *, plan: dict, data: RunData) -> None:
    """A Tune trial of the sweep: run (or resume) the protocol with the trial's params (``config``) in its folder."""
    _sweep_trial(ExperimentConfig.model_validate(plan["cfg"]), dict(config), plan, data)


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
        callbacks = [ObjectiveReportCallback(out, cfg)]
        protocol(cfg, out, data, pending, {}, f"trial-{trial_id}", callbacks, verbose=plan.get("verbose", False))
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


def _scheduler(cfg: ExperimentConfig):
    """ASHA on the objective, one rung per committed stage (the last stage is never a rung: stopping saves nothing)."""
    units = len(cfg.seeds) * len(cfg.stages)
    if cfg.tune.scheduler == "fifo" or units < 2:
        return FIFOScheduler()
    max_t = units - 1
    return ASHAScheduler(
        time_attr=STAGES_DONE,
        metric=SCORE if cfg.tune.immediate_floor is not None else OBJECTIVE,
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


def _searcher(cfg: ExperimentConfig, space: SearchSpace, store: ResultStore | None = None) -> OptunaSearch:
    """Optuna's TPE, seeded, over the space; multi-objective (immediate, objective) when configured. Its study lives
    in ``OUT/optuna.journal`` (Optuna's journal file storage) when OUT is local, so ``optuna-dashboard`` can open it
    and a resumed sweep's sampler reads every earlier trial from it even where Tune's restore would not."""
    import optuna

    names = objective_names(cfg)
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.seed, n_startup_trials=cfg.tune.startup_trials)
    metric = names if len(names) > 1 else names[0]
    mode = ["max"] * len(names) if len(names) > 1 else "max"
    journal = store.local_path(OPTUNA_JOURNAL) if store is not None else None
    storage = None
    if journal:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(journal))
    return StagewiseOptunaSearch(
        space=space.distributions(),
        metric=metric,
        mode=mode,
        sampler=sampler,
        storage=storage,
        study_name=cfg.name,
        total_stages=len(cfg.seeds) * len(cfg.stages),
    )


def _floor_from_baselines(
    cfg: ExperimentConfig, out: str, address: str | None, runner: Callable | None, verbose: bool
) -> ExperimentConfig:
    """Run (or resume) the sweep's baseline runs on the development seeds (the confirmation reuses them) and return
    ``cfg`` with the immediate floor they set."""
    from lhas_ray.tuning.baselines import run_baselines, with_immediate_floor

    if runner is None:
        from lhas_ray.launch import run_experiment

        runner = functools.partial(run_experiment, verbose=verbose)
    print(f"the baselines first, on the development seeds {cfg.seeds}: they set the immediate floor", flush=True)
    floored, text = with_immediate_floor(cfg, run_baselines(cfg, out, address, runner))
    log.info(text)  # the console prints it (with its time) and OUT/logs/driver.log keeps it
    return floored


def _resources_text(resources: dict[str, float]) -> str:
    shown = [f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if resources.get(k)]
    return ", ".join(shown) or "no CPU"


def run_sweep(
    cfg: ExperimentConfig,
    space: SearchSpace,
    out: str,
    *,
    trials: int | None = None,
    address: str | None = None,
    resume: bool = False,
    protocol: Callable | None = None,
    baseline_runner: Callable | None = None,
    verbose: bool = False,
) -> SweepResult:
    """Run (or resume) a sweep of ``trials`` trials into ``out`` and write its tables and best config. The console
    gets a line per trial event (``TrialLines``); Tune's own tables only when ``verbose``. With
    ``tune.immediate_tolerance`` the baselines run first (``baseline_runner`` stands in for ``run_experiment`` in
    tests) and set the immediate floor the trials are held to."""
    n_trials = trials or cfg.tune.trials
    tuned_selector(cfg)  # a bad tune.selector fails before Ray starts
    out = child_uri(out)
    store = ResultStore(out)
    started = _claim_folder(store, sweep_spec(cfg, space, n_trials), resume)
    log_to_folder(out)
    suites = build_suites(cfg)  # bad data settings fail here, before Ray starts
    if cfg.tune.immediate_tolerance is not None and cfg.tune.immediate_floor is None:
        cfg = _floor_from_baselines(cfg, out, address, baseline_runner, verbose)
    init_ray(cfg, address, verbose)
    quiet_libraries()
    plan = {"mode": "sweep", "cfg": cfg.model_dump(mode="json"), "out": out, "protocol": protocol, "verbose": verbose}
    trainable = trial_resources(sweep_trainable, plan=plan, data=run_data(cfg, suites))
    storage, fs = tune_storage(store)
    experiment = posixpath.join(storage, EXPERIMENT)
    if started and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log.info("resuming the sweep in %s (finished trials are kept, unfinished ones continue)", out)
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=fs
        )
    else:
        resources, source = max_cluster_resources()
        at_once = trial_concurrency(cfg, resources)
        why = "tune.max_concurrent" if cfg.tune.max_concurrent else f"{source}: {_resources_text(resources)}"
        print(f"{min(at_once, n_trials)} trials at a time ({why})", flush=True)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(cfg, space, store),
                scheduler=_scheduler(cfg),
                num_samples=n_trials,
                max_concurrent_trials=at_once,
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
                callbacks=[*tune_callbacks(cfg), *([] if verbose else [TrialLines(n_trials)])],
                verbose=1 if verbose else 0,
            ),
        )
    with library_prints(out, verbose):
        grid = tuner.fit()
    return write_sweep_outputs(cfg, space, out, _trial_rows(cfg, out, grid))
