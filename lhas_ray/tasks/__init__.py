"""Where examples come from: one schema (``schema.py``), many sources; ``build_suite`` gives a run's every set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
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
    """Build every set of the experiment from its config (deterministic in ``data.seed``); fails before Ray work."""
    stages = []
    for t, st in enumerate(cfg.stages, start=1):
        build = {"builtin": _builtin_stage, "text": _text_stage, "hf": _hf_stage}[st.source]
        stages.append(build(cfg, t, st))
    d, warm = cfg.data, cfg.training.warmup
    if cfg.stages[0].source == "builtin":
        warmup = builtin.mixture_set("warmup", warm.size, d.seed, d.min_len, d.max_len)
        proxy = builtin.mixture_set("proxy", max(64, min(warm.size, 512)), d.seed, d.min_len, d.max_len)
    else:  # real data: warm-up and future proxy are samples of the first pool, known before any stage runs
        warmup = _sample(stages[0].pool, min(warm.size, stages[0].pool.num_rows), d.seed, 0)
        proxy = _sample(stages[0].pool, min(512, stages[0].pool.num_rows), d.seed, 1)
    return Suite(warmup=warmup, proxy=proxy, stages=stages)


def _sample(table: pa.Table, n: int, seed: int, salt: int) -> pa.Table:
    rows = np.sort(np.random.default_rng([seed, salt, 4242]).choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(rows))


def _ids(stage: int, code: str, sub: int = 0) -> int:
    """First example_id of a set: the built-in suite's id layout (stage, split code, sub-set)."""
    return stage * builtin._STAGE_STRIDE + builtin.SPLIT_CODE[code] * builtin._SPLIT_STRIDE + sub * 100_000_000


def _builtin_stage(cfg: ExperimentConfig, t: int, st) -> StageSets:
    d = cfg.data
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
    return StageSets(
        index=t,
        name=st.name,
        targets=list(st.targets),
        budget=st.budget,
        pool=builtin.pool(spec, d.seed, d.min_len, d.max_len),
        eval=builtin.eval_set(spec, d.seed, d.min_len, d.max_len),
        ood=builtin.ood_sets(spec, d.seed, d.min_len, d.max_len),
        probe=builtin.probe_set(spec, d.seed, d.min_len, d.max_len),
    )


def _shares(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split n into integer counts proportional to weights (largest remainder), so they sum to exactly n."""
    names = list(weights)
    raw = np.array([weights[k] for k in names], dtype=np.float64) * n / sum(weights.values())
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    return {k: int(c) for k, c in zip(names, counts, strict=True) if c}


def _text_stage(cfg: ExperimentConfig, t: int, st) -> StageSets:
    from lhas_ray.tasks import text

    tx, seed = st.text, cfg.data.seed
    missing = text.missing_sources(sorted({*st.targets, *tx.mix, *tx.ood_domains}))
    if missing:
        raise ValueError(f"stage {st.name!r}: " + "; ".join(f"text domain {k!r}: {v}" for k, v in missing.items()))
    kw = {"seed": seed, "stage": t, "max_chars": tx.max_chars, "prompt_chars": tx.prompt_chars}
    roles = {dom: "target" if dom in st.targets else "other" for dom in tx.mix}
    pool = text.text_mixture(_shares(tx.mix, st.pool.size), split="pool", start_id=_ids(t, "pool"), roles=roles, **kw)
    evals = [
        text.text_examples(dom, st.eval_size, split="eval", start_id=_ids(t, "eval", i), tags=["target"], **kw)
        for i, dom in enumerate(st.targets)
    ]
    ood = {
        f"ood/{dom}": text.text_examples(dom, st.ood_size, split="ood", start_id=_ids(t, "ood/length", i), **kw)
        for i, dom in enumerate(tx.ood_domains)
    }
    probe_counts = _shares(dict.fromkeys(st.targets, 1.0), st.probe_size)
    probe = text.text_mixture(probe_counts, split="probe", start_id=_ids(t, "probe"), **kw)
    return StageSets(t, st.name, list(st.targets), st.budget, pool, pa.concat_tables(evals), ood, probe)


def _hf_stage(cfg: ExperimentConfig, t: int, st) -> StageSets:
    from lhas_ray.tasks.hf import load_hf_examples

    seed = cfg.data.seed
    pool = load_hf_examples(st.hf.pool, stage=t, split="pool", start_id=_ids(t, "pool"), n=st.pool.size, seed=seed)
    # one draw from the eval source, cut in two, so the probe sample never shares a row with the eval set
    held = load_hf_examples(
        st.hf.eval, stage=t, split="eval", start_id=_ids(t, "eval"), n=st.eval_size + st.probe_size, seed=seed
    )
    eval_set = held.slice(0, st.eval_size)
    probe = held.slice(st.eval_size)
    probe = probe.set_column(
        probe.schema.get_field_index("split"), probe.schema.field("split"), pa.array(["probe"] * probe.num_rows)
    )
    ood = {
        f"ood/{name}": load_hf_examples(
            spec, stage=t, split="ood", start_id=_ids(t, "ood/length", i), n=st.ood_size, seed=seed
        )
        for i, (name, spec) in enumerate(st.hf.ood.items())
    }
    return StageSets(t, st.name, list(st.targets), st.budget, pool, eval_set, ood, probe)
