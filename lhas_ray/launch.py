"""The driver side of a run: the output-folder guard, the data draws, one ``TorchTrainer.fit()`` per trajectory group.

``run_experiment`` builds every seed's suite (failing before any Ray work on bad data settings), checks that OUT holds
this very config (or nothing), starts Ray once, hands the pools to Ray Data and runs the pending trajectories:
packed into ``ray.concurrent_trajectories`` groups, each group ONE ``TorchTrainer.fit()`` whose workers run all its
trajectories and stages (``protocol.trajectory_worker``), so Train worker start-up is paid once per group, not once
per stage. Several groups run side by side as Ray Tune trials (``run_groups_side_by_side``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data
import yaml
from ray import tune
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from lhas_ray import schemas
from lhas_ray.config import ConfigError, ExperimentConfig, config_from_dict, dump_config
from lhas_ray.console import library_prints, log_to_folder, raylet_messages_to_log, route_library_logs, watch_units
from lhas_ray.local_ray import start_local_ray
from lhas_ray.progress import quiet_libraries
from lhas_ray.scoring.whole_pool import WholePoolDataConfig
from lhas_ray.store import ResultStore, Unit, check_committed
from lhas_ray.tasks.schema import POOL_BLOCK_ROWS, pool_key
from lhas_ray.tasks.streamed import streamed_dataset
from lhas_ray.tasks.suite import Suite, build_suite
from lhas_ray.train_entry import trajectory_worker
from lhas_ray.tuning.trials import trial_concurrency, trial_resources, tune_callbacks, tune_storage


def ensure_same_run(store: ResultStore, cfg: ExperimentConfig) -> None:
    """Refuse to mix runs: an output folder that holds another config's results is never written into.

    The stored config is compared as a validated config, so a folder written before a later version added a setting
    with a default still resumes.
    """
    if store.exists("sweep.yaml"):
        raise ValueError(f"{store.uri} holds a sweep (sweep.yaml); use a fresh --output for a run")
    if not store.is_run():
        store.write_bytes("config.yaml", dump_config(cfg).encode())
        return
    try:
        existing = config_from_dict(yaml.safe_load(store.read_bytes("config.yaml")), source=store.path("config.yaml"))
    except ConfigError as e:
        raise ValueError(
            f"{store.uri} holds a run whose config this version cannot read ({e}); use a fresh --output"
        ) from e
    identity = {"tracking", "ray"}  # where a run runs and where it is also logged are not what its results are
    if existing.model_dump(mode="json", exclude=identity) != cfg.model_dump(mode="json", exclude=identity):
        raise ValueError(
            f"{store.uri} already holds a run with a different config; use a fresh --output "
            "(or rerun with exactly the same config to resume it)"
        )


def init_ray(cfg: ExperimentConfig, address: str | None, verbose: bool = False) -> float:
    """Connect to a cluster (address) or start a local Ray sized to this machine; returns the seconds it took.

    Workers' and actors' output reaches this terminal only when ``verbose`` (it is in OUT/logs/ otherwise)."""
    start = time.perf_counter()
    if not ray.is_initialized():
        if not verbose:  # Ray's import added its own terminal handler; ray.init logs through it
            route_library_logs()
            raylet_messages_to_log()
        addr = address or cfg.ray.address
        if addr:
            ray.init(address=addr, log_to_driver=verbose)
        else:
            start_local_ray(cfg.ray.num_cpus, log_to_driver=verbose)
        if not verbose:
            route_library_logs()
    return time.perf_counter() - start


def scoring_room(cfg: ExperimentConfig, address: str | None) -> None:
    """A local instance must leave a CPU for a scoring actor beside the training workers (``scoring.mode:
    actor_pool``), or scoring would wait forever; on a cluster, rank 0 checks the free resources when it scores."""
    if cfg.scoring.mode != "actor_pool" or address or cfg.ray.address:
        return
    import os

    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    group = cfg.training.num_workers * cfg.training.cpus_per_worker
    training = group * max(1, min(cfg.ray.concurrent_trajectories, int(cpus // group)))
    if cpus - training < cfg.scoring.cpus_per_actor:
        raise ValueError(
            f"scoring.mode: actor_pool needs {cfg.scoring.cpus_per_actor:g} free CPU for a scoring actor, but the "
            f"training workers take {training:g} of this instance's {cpus} (training.num_workers x cpus_per_worker "
            "x concurrent groups); set ray.num_cpus higher, lower training.num_workers or scoring.cpus_per_actor, "
            "or use scoring.mode: workers"
        )


def trajectory_groups(cfg: ExperimentConfig, store: ResultStore) -> list[list[tuple[str, int]]]:
    """Pending (selector, seed) trajectories, dealt round-robin into ``ray.concurrent_trajectories`` groups."""
    last = len(cfg.stages)
    pending = [
        (s.key, seed) for seed in cfg.seeds for s in cfg.selectors if not store.is_committed(Unit(s.key, seed, last))
    ]
    n = min(cfg.ray.concurrent_trajectories, len(pending))
    return [pending[i::n] for i in range(n)] if n else []


def fit_group(
    cfg: ExperimentConfig,
    out: str,
    data: RunData,
    group: list,
    fixed: dict,
    name: str,
    callbacks=None,
    verbose: bool = False,
):
    """One TorchTrainer.fit() that runs every trajectory of ``group`` (the unit of Train start-up cost).

    The workers get the suites of the group's seeds (without pools) and, as Ray Datasets, only the pools they use:
    as Train datasets, sharded over the workers (``scoring.mode: workers``), or whole, for the scoring actor pool
    rank 0 starts (``actor_pool``). They write their output to OUT/logs/NAME-rank<r>.log unless ``verbose``.
    """
    seeds = sorted({seed for _, seed in group})
    suites = {seed: data.suites[seed] for seed in seeds}
    pools = {k: data.pools[k] for k in sorted({pool_key(cfg, seed, t) for seed in seeds for t in data.stages})}
    store = ResultStore(out)
    local = store.local_path("_ray")
    actors = cfg.scoring.mode == "actor_pool"
    trainer = TorchTrainer(
        trajectory_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "out": out,
            "suites": suites,
            "trajectories": group,
            "fixed_costs": fixed,
            "fit_started": time.time(),
            "name": name,
            "verbose": verbose,
            "pools": pools if actors else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.training.num_workers,
            use_gpu=cfg.training.use_gpu,
            resources_per_worker={"CPU": cfg.training.cpus_per_worker, **({"GPU": 1} if cfg.training.use_gpu else {})},
        ),
        torch_config=TorchConfig(
            backend="nccl" if cfg.training.use_gpu else "gloo", timeout_s=cfg.training.collective_timeout_s
        ),
        datasets=None if actors else pools,
        dataset_config=WholePoolDataConfig(),
        run_config=RunConfig(
            name=name,
            storage_path=local or store.path("_ray"),
            storage_filesystem=None if local else store.fs,  # s3:// and gs:// go through the store's pyarrow fs
            # a dead worker restarts the group; trajectory_worker skips committed units, so it resumes, not redoes
            failure_config=FailureConfig(max_failures=cfg.training.max_failures),
            callbacks=callbacks or [],
        ),
    )
    return trainer.fit()


def pool_dataset(pool: pa.Table, num_workers: int, rows_per_block: int = POOL_BLOCK_ROWS) -> ray.data.Dataset:
    """A pool as a materialized Ray Dataset of several blocks, so that every worker gets a share of whole blocks."""
    n_blocks = max(num_workers * 2, -(-pool.num_rows // rows_per_block))
    bounds = np.linspace(0, pool.num_rows, n_blocks + 1).astype(int)
    return ray.data.from_arrow([pool.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a])


@dataclass
class RunData:
    """Every data draw of a run: each trajectory seed's suite (without pools; seeds of one draw share the object)
    and the pools as Ray Datasets named by ``pool_key``."""

    suites: dict[int, Suite]
    pools: dict[str, ray.data.Dataset]
    removed: pa.Table  # seed, stage, rows_removed: pool rows dropped for sharing text with a held-out set

    @property
    def stages(self) -> range:
        return range(1, len(next(iter(self.suites.values())).stages) + 1)


def build_suites(cfg: ExperimentConfig) -> dict[int, Suite]:
    """Each trajectory seed's suite, built once per data draw (``data.resample``); fails before any Ray work."""
    by_draw: dict[int, Suite] = {}
    for seed in cfg.seeds:
        draw = cfg.data_seed(seed)
        if draw not in by_draw:
            by_draw[draw] = build_suite(cfg, seed)
    return {seed: by_draw[cfg.data_seed(seed)] for seed in cfg.seeds}


def run_data(cfg: ExperimentConfig, suites: dict[int, Suite]) -> RunData:
    """The suites' pools as Ray Datasets (one per draw and stage) and the light suites the workers receive."""
    pools, light, removed, light_of = {}, {}, [], {}
    for seed, suite in suites.items():
        for stage in suite.stages:
            key = pool_key(cfg, seed, stage.index)
            if key not in pools:  # a streamed pool stays in its files: lazy, read a batch at a time
                streamed = stage.stream is not None
                pools[key] = (
                    streamed_dataset(stage.stream) if streamed else pool_dataset(stage.pool, cfg.training.num_workers)
                )
            removed.append((seed, stage.index, int(suite.removed_from_pools.get(stage.index, 0))))
        light[seed] = light_of.setdefault(id(suite), suite.without_pools())
    table = pa.table(
        {name: [r[i] for r in removed] for i, name in enumerate(("seed", "stage", "rows_removed"))},
        schema=POOL_LEAKS_SCHEMA,
    )
    return RunData(light, pools, table)


POOL_LEAKS_SCHEMA = schemas.POOL_LEAKS


def run_units(cfg: ExperimentConfig) -> list[Unit]:
    """Every unit a run commits, in the order its trajectories run them (stage 0: the base model's evaluation)."""
    return [Unit(s.key, seed, t) for seed in cfg.seeds for s in cfg.selectors for t in range(len(cfg.stages) + 1)]


def run_experiment(
    cfg: ExperimentConfig, out: str, address: str | None = None, verbose: bool = False, live: bool | None = None
) -> ResultStore:
    """Run (or resume) every trajectory of the experiment into ``out``; returns the store. Progress: a line per
    committed unit (a live bar when ``live``, default: stdout is a terminal)."""
    store = ResultStore(out)
    out = store.uri  # absolute: the Train workers do not share the driver's working directory
    scoring_room(cfg, address)
    suites = build_suites(cfg)  # bad data settings fail here, before Ray starts
    ensure_same_run(store, cfg)
    check_committed(store, [(s.key, seed) for seed in cfg.seeds for s in cfg.selectors], len(cfg.stages))
    log_to_folder(out)
    ray_start = init_ray(cfg, address, verbose)
    quiet_libraries()
    data = run_data(cfg, suites)
    store.write_parquet("pool_leaks.parquet", data.removed)
    groups = trajectory_groups(cfg, store)
    fixed = {"ray_start": ray_start}  # booked to the first unit the run commits
    with watch_units(store, run_units(cfg), live=live):
        if len(groups) == 1:
            fit_group(cfg, out, data, groups[0], fixed, name=f"{cfg.name}-group0", verbose=verbose)
        elif groups:
            run_groups_side_by_side(cfg, out, data, groups, fixed, verbose)
    return store


def group_trainable(config: dict, *, plan: dict, data: RunData) -> None:
    """A Tune trial of ``run``: one group of its trajectories (``config["group"]``) as one Train run."""
    cfg = ExperimentConfig.model_validate(plan["cfg"])
    i = int(config["group"])
    group = [tuple(t) for t in plan["groups"][i]]
    fixed = plan["fixed"] if i == 0 else {}
    name = f"{cfg.name}-group{i}"
    fit_group(cfg, plan["out"], data, group, fixed, name, callbacks=[TuneReportCallback()], verbose=plan["verbose"])


def run_groups_side_by_side(
    cfg: ExperimentConfig, out: str, data: RunData, groups: list, fixed_costs: dict, verbose: bool = False
) -> None:
    """Run ``run``'s trajectory groups as concurrent Tune trials (one Train run each); raise if any group failed."""
    out = ResultStore(out).uri
    plan = {"cfg": cfg.model_dump(mode="json"), "out": out, "groups": groups, "fixed": fixed_costs, "verbose": verbose}
    storage, fs = tune_storage(ResultStore(out))
    tuner = tune.Tuner(
        trial_resources(group_trainable, plan=plan, data=data),
        param_space={"group": tune.grid_search(list(range(len(groups))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=min(len(groups), trial_concurrency(cfg))),
        run_config=tune.RunConfig(
            name=f"groups-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            callbacks=tune_callbacks(),
            verbose=0,
        ),
    )
    with library_prints(out, verbose):
        errors = tuner.fit().errors
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(groups)} trajectory groups failed; first error: {errors[0]}")
