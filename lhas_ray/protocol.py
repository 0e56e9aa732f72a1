"""The multi-stage selection protocol (DESIGN.md), the recipe every Ray Train worker runs, read top to bottom.

For each selector s, seed r and stage t, from the base checkpoint: 1. score pool t with the current model (this
worker's Ray Data shard), 2. select k_t examples, 3. train on them (DeepSpeed), 4. evaluate on every stage's eval and
OOD sets and the general set, then 5. probe adaptation to stage t+1. Every stage commits its rows to the store before
the next begins; a rerun skips what is complete. ``launch.py`` is the driver that starts these workers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time

import numpy as np
import pyarrow as pa
import ray
import ray.train

from lhas_ray.config import ExperimentConfig
from lhas_ray.console import logs_dir, worker_output
from lhas_ray.evaluation.accuracy import EvalSet, evaluate_sets
from lhas_ray.model import build_model, with_adapters
from lhas_ray.progress import Progress, Timer, quiet_libraries, worker_start_seconds
from lhas_ray.schemas import LONG_TABLES, SELECTIONS, conform, rows_table
from lhas_ray.scoring.features import select_grad_params
from lhas_ray.scoring.score import Scorer
from lhas_ray.scoring.shards import ROW_COLUMNS, gather_rows, in_order, score_shard, score_spread
from lhas_ray.selection import SelectionContext, get_selector
from lhas_ray.store import WORKERS, ResultStore, Unit
from lhas_ray.tasks.schema import pool_key
from lhas_ray.tasks.suite import Suite
from lhas_ray.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from lhas_ray.training.dist import broadcast_object, rank
from lhas_ray.training.engine import deepspeed_config, disable_cpu_shm_op, make_engine
from lhas_ray.training.moments import gather_moments, load_moments, save_moments
from lhas_ray.training.stage import train_steps
from lhas_ray.training.tensorboard import log_curves

log = logging.getLogger("lhas_ray.protocol")


def eval_sets(suite: Suite) -> list[EvalSet]:
    """Every stage's eval set, every OOD set (named for the stage it belongs to) and the general set over every skill:
    what each checkpoint is judged on (row t of R, and the rest)."""
    sets = [EvalSet(f"eval/stage{s.index}", s.eval, s.index) for s in suite.stages]
    for s in suite.stages:
        sets += [EvalSet(f"ood/stage{s.index}-{name.split('/')[-1]}", t, None) for name, t in s.ood.items()]
    if suite.general is not None and suite.general.num_rows:
        sets.append(EvalSet("general", suite.general, None))
    return sets


def adam_selectors(cfg: ExperimentConfig) -> set[str]:
    """Keys of the selectors that score with Adam-preconditioned gradients (less, precondition: adam)."""
    return {s.key for s in cfg.selectors if s.name == "less" and s.params.get("precondition") == "adam"}


class TrajectoryRunner:
    """Runs trajectories inside one Train worker (all ranks together); rank 0 writes to the store."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        store: ResultStore,
        suites: dict[int, Suite],
        cache_dir: str,
        progress: Progress,
        pools: dict | None = None,
    ):
        self.cfg, self.store, self.suites, self.cache_dir, self.progress = cfg, store, suites, cache_dir, progress
        self.pools = pools or {}  # scoring.mode actor_pool: the pool datasets by pool_key (workers: Train's shards)
        self.sets = {seed: eval_sets(suite) for seed, suite in suites.items()}
        self.world = ray.train.get_context().get_world_size()
        self.ds_config = deepspeed_config(cfg.training, cfg.model, self.world)
        self.micro_batch = cfg.training.micro_batch(self.world)
        self._base_rows: dict[int, list[dict]] = {}
        self._lm_tasks = None  # lm-eval's task index, built on first use (indexing takes seconds)

    # ---- building blocks ----
    def _engine(self, model, lr: float, steps: int):
        return make_engine(model, self.ds_config, lr, self.cfg.training.weight_decay, steps)

    def _load(self, relpath: str, adapters: bool = True, adapter_seed: int | None = None):
        """A store checkpoint as (model, tokenizer), with fresh LoRA adapters when the config asks for them."""
        model, tokenizer = load_checkpoint(self.store, relpath, self.cfg.model, self.cache_dir)
        return (with_adapters(model, self.cfg.model, adapter_seed) if adapters else model), tokenizer

    def _evaluate(self, model, tokenizer, sets: list[EvalSet]) -> list[dict]:
        cfg = self.cfg
        return evaluate_sets(
            model, tokenizer, sets, cfg.model.max_length, cfg.evaluation.batch_size, cfg.evaluation.accuracy
        )

    def _judge(self, model, tokenizer, seed: int) -> list[dict]:
        """A checkpoint's rows: every eval, OOD and general set of the seed, and the lm-eval tasks when configured."""
        rows = self._evaluate(model, tokenizer, self.sets[seed])
        if (lm_cfg := self.cfg.evaluation.lm_eval) is not None:
            from lhas_ray.evaluation.lm_eval import evaluate_lm_tasks, task_manager

            if self._lm_tasks is None:
                self._lm_tasks = task_manager(lm_cfg)
            rows += evaluate_lm_tasks(model, tokenizer, lm_cfg, self._lm_tasks, self.cfg.model.max_length)
        return rows

    def _accuracy(self, model, tokenizer, eset: EvalSet) -> dict[str, float]:
        return {r["metric"]: r["value"] for r in self._evaluate(model, tokenizer, [eset]) if r["skill"] == "all"}

    def _commit(self, unit: Unit, metrics=None, curves=None, timings=None, extra=None, terms=None) -> None:
        """Write the unit's parts, then its commit marker (rank 0); all ranks wait for it."""
        if rank() == 0:
            keys = {"selector": unit.selector, "seed": unit.seed, "stage": unit.stage}
            for name, rows in (("metrics", metrics), ("curves", curves), ("timings", timings), ("terms", terms)):
                if rows:
                    self.store.write_part(name, unit, rows_table(rows, LONG_TABLES[name], **keys))
            for relpath, table in (extra or {}).items():
                self.store.write_parquet(relpath, table)
            log_curves(self.store, unit, curves or [])
            self.store.commit(unit)
        ray.train.report({"selector": unit.selector, "seed": unit.seed, "stage": unit.stage, **self._summary(metrics)})

    def _summary(self, metrics) -> dict[str, float]:
        """Per-stage accuracies for Ray's own result (and Tune): R[t, j] for every stage j."""
        return {
            f"acc_{r['eval_set'].replace('/', '_')}": r["value"]
            for r in metrics or []
            if r["skill"] == "all" and r["metric"] == "accuracy"
        }

    # ---- stage 0: the seed's base checkpoint ----
    def ensure_base(self, seed: int) -> tuple[list[dict], dict[str, float]]:
        """Make the seed's base checkpoint (broad warm-up through DeepSpeed) unless it exists; return its curve."""
        relpath = checkpoint_path("", seed, 0)
        if broadcast_object(self.store.exists(relpath, "config.json") if rank() == 0 else None):
            return [], {}
        timer = Timer(progress=self.progress)
        warm = self.cfg.training.warmup
        suite = self.suites[seed]
        model, tokenizer = build_model(self.cfg.model, seed)
        model = with_adapters(model, self.cfg.model)
        curve: list[dict] = []
        if warm.steps:
            with timer("warmup"):
                engine = self._engine(model, warm.lr, warm.steps)
                curve = train_steps(
                    engine,
                    tokenizer,
                    suite.warmup,
                    steps=warm.steps,
                    micro_batch=self.micro_batch,
                    max_length=self.cfg.model.max_length,
                    seed=seed,
                    eval_every=warm.steps,
                )
                model = engine.module
                moments = self._moments(engine) if adam_selectors(self.cfg) else None
        with timer("checkpoint"):
            save_checkpoint(model, tokenizer, self.store, relpath, keep_existing=True)
            if warm.steps and moments is not None and rank() == 0:
                save_moments(self.store, relpath, moments)
        return curve, timer.seconds

    def _moments(self, engine):
        """Adam's moments of the parameters whose gradients are projected (all ranks: ZeRO gathers them)."""
        names = list(select_grad_params(engine.module, self.cfg.scoring.grad_params))
        return gather_moments(engine, names)

    def base_unit(self, selector: str, seed: int, fixed_costs: dict[str, float]) -> None:
        """Stage 0 of a trajectory: the base model on every eval set (computed once per seed and worker)."""
        curve, seconds = self.ensure_base(seed)
        timer = Timer({**fixed_costs, **seconds}, self.progress)
        if seed not in self._base_rows:
            with timer("evaluation"):
                model, tokenizer = self._load(checkpoint_path("", seed, 0), adapters=False)
                self._base_rows[seed] = self._judge(model, tokenizer, seed)
        self._commit(Unit(selector, seed, 0), self._base_rows[seed], curve, timer.rows())

    # ---- stage t ----
    def stage_unit(self, selector_key: str, seed: int, t: int, fixed_costs: dict[str, float] | None = None) -> None:
        """Score, select, train, evaluate and probe stage t of one trajectory, then commit it."""
        cfg, timer = self.cfg, Timer(dict(fixed_costs or {}), self.progress)
        stage = self.suites[seed].stages[t - 1]
        sel_cfg = cfg.selector(selector_key)
        selector = get_selector(sel_cfg.name, **sel_cfg.params)
        model, tokenizer = self._load(checkpoint_path(selector_key, seed, t - 1), adapter_seed=adapter_seed(seed, t))

        # 1. score pool t with the current model (the Train workers' Ray Data shards, or a Ray Data actor pool)
        with timer("scoring"):
            features, rows, context = self._score(selector, selector_key, model, tokenizer, seed, t)

        # 2. select k_t examples (rank 0), broadcast the ids, fetch their rows
        with timer("selection"):
            ids = selector.select(features, stage.budget, context) if rank() == 0 else None
            ids = np.asarray(broadcast_object(ids), dtype=np.int64)
            # each objective term's contribution to J of the selection (LHAS), written beside the selection
            terms = [{"term": k, **v} for k, v in getattr(selector, "terms_", {}).items()] if rank() == 0 else None
            selected = self._selected_rows(rows, ids, seed, t)

        # 3. train from checkpoint t-1 to checkpoint t (DeepSpeed), logging the curve on stage t's eval set
        with timer("training"):
            engine = self._engine(model.train(), cfg.training.lr, cfg.training.steps)
            own = EvalSet(f"eval/stage{t}", stage.eval, t)
            curve = train_steps(
                engine,
                tokenizer,
                selected,
                steps=cfg.training.steps,
                micro_batch=self.micro_batch,
                max_length=cfg.model.max_length,
                seed=seed * 1000 + t,
                eval_every=cfg.training.eval_every,
                evaluate=lambda: self._accuracy(engine.module, tokenizer, own),
            )
            # LESS's Adam features at stage t+1 need this training's optimizer state
            keep = selector_key in adam_selectors(cfg) and t < len(self.suites[seed].stages)
            moments = self._moments(engine) if keep else None
        with timer("checkpoint"):
            save_checkpoint(engine.module, tokenizer, self.store, checkpoint_path(selector_key, seed, t))
            if moments is not None and rank() == 0:
                save_moments(self.store, checkpoint_path(selector_key, seed, t), moments)

        # 4. evaluate checkpoint t on every stage's eval set and every OOD set: row t of R (and lm-eval's tasks)
        with timer("evaluation"):
            metrics = self._judge(engine.module, tokenizer, seed)
        engine.destroy()

        # 5. probe adaptation: a short fine-tune from checkpoint t on stage t+1's fixed probe sample
        if t < len(self.suites[seed].stages):
            with timer("probe"):
                curve += self.probe(selector_key, seed, t)

        sel_table = selected.select(["example_id", "skill", "tags"]).append_column(
            "order", pa.array(np.arange(len(ids), dtype=np.int64))
        )
        sel_table = conform(sel_table, SELECTIONS, f"selections of {selector_key} seed {seed} stage {t}")
        extra = {
            f"selections/{selector_key}/s{seed}/stage{t}.parquet": sel_table,
            f"features/{selector_key}/s{seed}/stage{t}.parquet": features,
        }
        self._commit(Unit(selector_key, seed, t), metrics, curve, timer.rows(), extra, terms)

    def _score(self, selector, selector_key: str, model, tokenizer, seed: int, t: int):
        """Step 1: the features the selector asks for (whole pool), this rank's pool rows (workers mode; None with an
        actor pool), and the selection context."""
        cfg = self.cfg
        columns = set(selector.requires) | set(getattr(selector, "optional", ()))
        want, keep = columns - {"skill"}, ("skill",) if "skill" in columns else ()
        adam = selector_key in adam_selectors(cfg)
        if cfg.scoring.mode == "actor_pool":
            features = self._score_with_actors(selector_key, want, keep, seed, t, adam) if rank() == 0 else None
            scorer = Scorer(model.eval(), tokenizer, set(), max_length=cfg.model.max_length)  # for the context
            return features, None, self._context(selector, scorer, self.suites[seed].stages[t - 1], seed)
        reference = self._load(checkpoint_path("", seed, 0), adapters=False)[0].eval() if "quality" in want else None
        scorer = Scorer(
            model.eval(),
            tokenizer,
            want,
            max_length=cfg.model.max_length,
            grad_dim=cfg.scoring.grad_dim,
            grad_params=cfg.scoring.grad_params,
            projection_seed=seed,
            reference=reference,
            # LESS as its authors define it: pool gradients preconditioned by the previous training's Adam state
            precondition=load_moments(self.store, checkpoint_path(selector_key, seed, t - 1)) if adam else None,
        )
        shard = ray.train.get_dataset_shard(pool_key(cfg, seed, t))
        features, rows = score_shard(scorer, shard, cfg.scoring.batch_size, keep)
        return features, rows, self._context(selector, scorer, self.suites[seed].stages[t - 1], seed)

    def _score_with_actors(self, selector_key: str, want: set, keep: tuple, seed: int, t: int, adam: bool):
        """The pool's features from a Ray Data actor pool over the free CPUs/GPUs, each actor building the scorer a
        worker would: checkpoint t-1, this stage's adapters, the base model for 'quality', LESS's Adam moments."""
        from lhas_ray.scoring.actor_pool import free_actors, score_with_actor_pool

        cfg, sc = self.cfg, self.cfg.scoring
        room = free_actors(sc.cpus_per_actor, sc.gpus_per_actor)
        if room < 1:
            raise RuntimeError(
                f"scoring.mode actor_pool: no room for a scoring actor ({sc.cpus_per_actor:g} CPU, "
                f"{sc.gpus_per_actor:g} GPU each) beside the training workers; free: {ray.available_resources()}. "
                "Give Ray more CPUs (ray.num_cpus, or a larger cluster), lower scoring.cpus_per_actor, or use "
                "scoring.mode: workers"
            )
        previous = checkpoint_path(selector_key, seed, t - 1)
        return score_with_actor_pool(
            self.pools[pool_key(cfg, seed, t)],
            self.store.uri,
            previous,
            cfg.model,
            want,
            max_length=cfg.model.max_length,
            batch_size=sc.batch_size,
            actors=min(sc.actors or room, room),
            grad_dim=sc.grad_dim,
            grad_params=sc.grad_params,
            projection_seed=seed,
            adapter_seed=adapter_seed(seed, t),
            reference=checkpoint_path("", seed, 0) if "quality" in want else None,
            moments=previous if adam else None,
            keep=keep,
            num_cpus_per_actor=sc.cpus_per_actor,
            num_gpus_per_actor=sc.gpus_per_actor,
        )

    def _selected_rows(self, rows: pa.Table | None, ids: np.ndarray, seed: int, t: int) -> pa.Table:
        """The selected pool rows, in selection order, on every rank: gathered from the ranks' shares (workers), or
        read from the pool dataset by rank 0 and broadcast (actor pool)."""
        if rows is not None:
            return gather_rows(rows, ids)
        found = None
        if rank() == 0:  # a streamed pool: its files, a batch at a time; in memory: the dataset's blocks
            from lhas_ray.scoring import actor_pool
            from lhas_ray.tasks import streamed

            stream = self.suites[seed].stages[t - 1].stream
            if stream is not None:
                found = streamed.rows_with_ids(stream, ids)
            else:
                found = actor_pool.rows_with_ids(self.pools[pool_key(self.cfg, seed, t)], ids)
            found = in_order(found, ids).select(ROW_COLUMNS)
        return broadcast_object(found)

    def _context(self, selector, scorer: Scorer, stage, seed: int) -> SelectionContext:
        """Target and future-proxy gradients/embeddings, computed only when the selector asks for them."""
        need = set(getattr(selector, "context_fields", ()))
        ctx = SelectionContext(seed=seed)
        if not need:
            return ctx

        def scored(table: pa.Table, want: set[str]) -> pa.Table:
            ref = Scorer(
                scorer.model,
                scorer.tokenizer,
                want,
                max_length=scorer.max_length,
                grad_dim=self.cfg.scoring.grad_dim,
                grad_params=self.cfg.scoring.grad_params,
                projection_seed=seed,
            )
            return score_spread(ref, table, self.cfg.scoring.batch_size)

        if need & {"target_grads", "target_embs"}:
            # the stage's target examples: its probe sample (labelled, never its eval set)
            target = scored(stage.probe, {"grad", "emb"})
            skills = np.asarray(stage.probe.sort_by("example_id").column("skill").to_numpy(zero_copy_only=False))
            grads = _matrix(target, "grad")
            ctx.target_grads = np.stack([grads[skills == s].mean(0) for s in sorted(set(skills))])
            ctx.target_embs = _matrix(target, "emb")
        if "proxy_grad" in need:
            proxy = self.suites[seed].future_proxy(selector.p.get("proxy", "broad"), stage.index)
            ctx.proxy_grad = _matrix(scored(proxy, {"grad"}), "grad").mean(0)
        return ctx

    def probe(self, selector_key: str, seed: int, t: int) -> list[dict]:
        """Fine-tune a copy of checkpoint t on stage t+1's probe sample; the trajectory's model is untouched."""
        cfg = self.cfg
        nxt = self.suites[seed].stages[t]
        model, tokenizer = self._load(checkpoint_path(selector_key, seed, t), adapter_seed=adapter_seed(seed, t) + 500)
        engine = self._engine(model.train(), cfg.probe.lr, cfg.probe.steps)
        target = EvalSet(f"eval/stage{t + 1}", nxt.eval, t + 1)
        rows = train_steps(
            engine,
            tokenizer,
            nxt.probe,
            steps=cfg.probe.steps,
            micro_batch=self.micro_batch,
            max_length=cfg.model.max_length,
            seed=seed * 1000 + t + 500,
            eval_every=cfg.probe.eval_every,
            evaluate=lambda: self._accuracy(engine.module, tokenizer, target),
        )
        engine.destroy()
        return [{**r, "split": "probe" if r["split"] == "eval" else "probe_train"} for r in rows]

    # ---- a whole trajectory ----
    def trajectory(self, selector_key: str, seed: int, fixed_costs: dict[str, float]) -> None:
        """Stages 0..T of one (selector, seed), skipping committed ones (resume)."""
        n_stages = len(self.suites[seed].stages)
        stages = range(n_stages + 1)
        done = broadcast_object(
            [self.store.is_committed(Unit(selector_key, seed, t)) for t in stages] if rank() == 0 else None
        )
        self.progress.total_units -= sum(done)
        for t in stages:
            if done[t]:
                continue
            self.progress.where = f"selector={selector_key} seed={seed} stage {t}/{n_stages}"
            if t == 0:
                self.base_unit(selector_key, seed, fixed_costs)
            else:
                self.stage_unit(selector_key, seed, t, fixed_costs)
            fixed_costs = {}  # start-up costs go to the first unit this run commits (stage 0, or where it resumes)
            self.progress.done_units += 1


def adapter_seed(seed: int, t: int) -> int:
    """The seed of stage t's fresh LoRA adapters in trajectory ``seed`` (the same on every rank and scoring actor)."""
    return seed * 1000 + t


def _matrix(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column).combine_chunks()
    return col.values.to_numpy().reshape(len(col), -1)


def record_worker(store: ResultStore, name: str) -> None:
    """``OUT/_workers/<name>.json``: the node, host and process this Train rank runs on (its latest start), so a
    cluster user can see where each rank of each worker group ran."""
    ctx = ray.train.get_context()
    info = {
        "name": name,
        "rank": ctx.get_world_rank(),
        "world_size": ctx.get_world_size(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
    }
    store.write_bytes(f"{WORKERS}/{name}.json", json.dumps(info).encode())


def trajectory_worker(config: dict) -> None:
    """The function Ray Train runs on every worker: all trajectories of one group, stage by stage."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    cfg = ExperimentConfig.model_validate(config["cfg"])
    if not cfg.training.use_gpu:
        disable_cpu_shm_op()
    store = ResultStore(config["out"])
    fixed = dict(config.get("fixed_costs", {}))  # start-up costs, booked to the first unit this run commits
    if (worker_start := worker_start_seconds(store, config, len(cfg.stages))) is not None:
        fixed["worker_start"] = worker_start
    logs = None if config.get("verbose") else logs_dir(config["out"])
    name = f"{config.get('name', 'run')}-rank{ray.train.get_context().get_world_rank()}"
    record_worker(store, name)
    with worker_output(logs, name), tempfile.TemporaryDirectory(prefix="lhas-ckpt-") as cache:
        n_units = len(config["trajectories"]) * (len(cfg.stages) + 1)
        runner = TrajectoryRunner(cfg, store, config["suites"], cache, Progress(n_units), config.get("pools"))
        for selector_key, seed in config["trajectories"]:
            runner.trajectory(selector_key, seed, fixed)
            fixed = {}
