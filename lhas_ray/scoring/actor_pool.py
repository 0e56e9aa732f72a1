"""Scoring as a Ray Data actor pool (``scoring.mode: actor_pool``): ``map_batches`` with a callable class that
loads the current checkpoint once per actor.

For pools far larger than the training group scores quickly: the actors fan out over the CPUs or GPUs training
leaves free, anywhere in the cluster, and the pool streams past them. Each actor pays model start-up once, not once
per batch. An actor builds exactly the scorer a Train worker would (checkpoint, adapters, reference model, Adam
moments, projection), so both modes give the same features.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pyarrow as pa
import ray

from lhas_ray.config import ModelConfig
from lhas_ray.model import with_adapters
from lhas_ray.scoring.score import Scorer, features_table
from lhas_ray.store import ResultStore
from lhas_ray.tasks import schema
from lhas_ray.training.checkpoint import load_checkpoint
from lhas_ray.training.moments import load_moments


class PoolScorer:
    """The per-actor scorer: the model (and reference model) loaded from store checkpoints in ``__init__``."""

    def __init__(
        self,
        store: str,
        checkpoint: str,
        model_cfg: dict,
        want: list[str],
        *,
        max_length: int,
        grad_dim: int,
        grad_params: list[str],
        projection_seed: int,
        adapter_seed: int | None = None,
        reference: str | None = None,
        moments: str | None = None,
        keep: tuple[str, ...] = (),
        device: str = "cpu",
    ):
        cfg, results = ModelConfig.model_validate(model_cfg), ResultStore(store)
        # a remote store's checkpoints are copied here, loaded, and removed: an actor per stage must not leave a copy
        with tempfile.TemporaryDirectory(prefix="lhas-scoring-") as cache:
            model, tokenizer = load_checkpoint(results, checkpoint, cfg, cache)
            ref = load_checkpoint(results, reference, cfg, cache)[0].to(device).eval() if reference else None
        if adapter_seed is not None:
            model = with_adapters(model, cfg, seed=adapter_seed)
        self.keep = list(keep)
        self.scorer = Scorer(
            model.to(device).eval(),
            tokenizer,
            set(want),
            max_length=max_length,
            grad_dim=grad_dim,
            grad_params=grad_params,
            projection_seed=projection_seed,
            reference=ref,
            precondition=load_moments(results, moments) if moments else None,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        features = features_table([self.scorer.score(batch)])  # sorted by example_id
        kept = batch.select(["example_id", *self.keep]).sort_by("example_id")
        for name in self.keep:
            features = features.append_column(name, kept.column(name))
        return features


def free_actors(cpus_per_actor: float, gpus_per_actor: float) -> int:
    """How many scoring actors the cluster's free CPUs (and GPUs) hold right now."""
    free = ray.available_resources()
    n = int(free.get("CPU", 0) // cpus_per_actor)
    if gpus_per_actor:
        n = min(n, int(free.get("GPU", 0) // gpus_per_actor))
    return n


def score_with_actor_pool(
    pool: ray.data.Dataset,
    store: str,
    checkpoint: str,
    model_cfg: ModelConfig,
    want: set[str],
    *,
    max_length: int,
    batch_size: int,
    actors: int,
    grad_dim: int = 64,
    grad_params: list[str] | None = None,
    projection_seed: int = 0,
    adapter_seed: int | None = None,
    reference: str | None = None,
    moments: str | None = None,
    keep: tuple[str, ...] = (),
    num_cpus_per_actor: float = 1,
    num_gpus_per_actor: float = 0,
) -> pa.Table:
    """Score a pool dataset with up to ``actors`` scoring actors (store-relative checkpoint paths); the features come
    back sorted by example_id, with the pool columns ``keep`` beside them."""
    scored = pool.map_batches(
        PoolScorer,
        fn_constructor_args=(store, checkpoint, model_cfg.model_dump(), sorted(want)),
        fn_constructor_kwargs={
            "max_length": max_length,
            "grad_dim": grad_dim,
            "grad_params": grad_params or ["last_block", "lm_head"],
            "projection_seed": projection_seed,
            "adapter_seed": adapter_seed,
            "reference": reference,
            "moments": moments,
            "keep": tuple(keep),
            "device": "cuda" if num_gpus_per_actor else "cpu",
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        # min 1 so the pool can start inside Ray Data's resource reservation; it scales up to `actors`
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=num_cpus_per_actor,
        num_gpus=num_gpus_per_actor,
    )
    parts = [ray.get(ref) for ref in scored.to_arrow_refs()]
    return pa.concat_tables(parts).sort_by("example_id") if parts else features_table([])


def rows_with_ids(pool: ray.data.Dataset, ids: np.ndarray) -> pa.Table:
    """The rows of ``ids`` from an in-memory pool dataset, read block by block in this process (no Ray Data job)."""
    rows = schema.rows_with_ids(pool.iter_batches(batch_size=None, batch_format="pyarrow"), ids)
    if rows is None:
        raise RuntimeError("the pool dataset has no blocks")
    return rows
