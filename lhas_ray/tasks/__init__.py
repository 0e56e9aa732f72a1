"""Where examples come from: one schema (``schema.py``), many sources; ``build_suite`` gives a run's every set."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from lhas_ray.config import ExperimentConfig
from lhas_ray.tasks import builtin


@dataclass
class StageSets:
    """Everything one stage owns: its candidate pool, eval set, OOD sets and its fixed probe sample."""

    index: int
    name: str
    targets: list[str]
    budget: int
    pool: pa.Table
    eval: pa.Table
    ood: dict[str, pa.Table] = field(default_factory=dict)
    probe: pa.Table | None = None


@dataclass
class Suite:
    """A run's data: the warm-up mixture (base checkpoint), the future-proxy set, and each stage's sets."""

    warmup: pa.Table
    proxy: pa.Table
    stages: list[StageSets]

    def without_pools(self) -> Suite:
        """The same suite minus the pools, which travel to workers as Ray Datasets instead."""
        empty = self.stages[0].pool.schema.empty_table()
        return Suite(self.warmup, self.proxy, [StageSets(**{**s.__dict__, "pool": empty}) for s in self.stages])


def build_suite(cfg: ExperimentConfig) -> Suite:
    """Build every set of the experiment from its config (deterministic in ``data.seed``)."""
    d = cfg.data
    stages = []
    for t, st in enumerate(cfg.stages, start=1):
        spec = builtin.SuiteSpec(
            stage=t,
            targets=tuple(st.targets),
            pool_size=st.pool.size,
            target_share=st.pool.target_share,
            related_share=st.pool.related_share,
            noise=st.pool.noise,
            duplicates=st.pool.duplicates,
            eval_size=st.eval_size,
            ood=tuple(st.ood),
            ood_size=st.ood_size,
            probe_size=st.probe_size,
        )
        stages.append(
            StageSets(
                index=t,
                name=st.name,
                targets=list(st.targets),
                budget=st.budget,
                pool=builtin.pool(spec, d.seed, d.min_len, d.max_len),
                eval=builtin.eval_set(spec, d.seed, d.min_len, d.max_len),
                ood=builtin.ood_sets(spec, d.seed, d.min_len, d.max_len),
                probe=builtin.probe_set(spec, d.seed, d.min_len, d.max_len),
            )
        )
    warm = cfg.training.warmup
    return Suite(
        warmup=builtin.mixture_set("warmup", warm.size, d.seed, d.min_len, d.max_len),
        proxy=builtin.mixture_set("proxy", max(64, min(warm.size, 512)), d.seed, d.min_len, d.max_len),
        stages=stages,
    )
