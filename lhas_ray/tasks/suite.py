"""A run's every set from its config (``build_suite``): the stages' pools, eval, probe and OOD sets, the warm-up
mixture, the future proxy and the general eval set, whatever source each stage names.

Data hygiene: held-out sets (eval, probe, OOD, general; the built-in proxy too) never share a prompt with a pool.
The built-in suite guarantees it by construction (``builtin.draw_suite``); text and HF pools lose every row whose
normalised prompt + answer equals a held-out row's (``schema.drop_leaks``), counted in ``Suite.removed_from_pools``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lhas_ray.tasks import builtin
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA, drop_leaks

if TYPE_CHECKING:
    from lhas_ray.config import ExperimentConfig
    from lhas_ray.tasks.streamed import StreamedPool

logger = logging.getLogger("lhas_ray.tasks")


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
    stream: StreamedPool | None = None  # hf.pool.stream: the pool stays in its files and ``pool`` is empty

    @property
    def pool_rows(self) -> int:
        """Candidate pool size N_t, in memory or streamed."""
        return self.stream.rows if self.stream is not None else self.pool.num_rows

    def pool_sample(self, n: int, seed: int, salt: int) -> pa.Table:
        """n pool rows drawn with (seed, salt): the same rows whether the pool is in memory or streamed."""
        positions = np.sort(np.random.default_rng([seed, salt, 4242]).choice(self.pool_rows, size=n, replace=False))
        if self.stream is not None:
            from lhas_ray.tasks.streamed import rows_at

            return rows_at(self.stream, positions)
        return self.pool.take(pa.array(positions, pa.int64()))


PROXIES = ("replay", "broad")


@dataclass
class Suite:
    """A run's data: the warm-up mixture (base checkpoint), the future-proxy set, and each stage's sets.

    ``general`` is the eval set over every skill/domain of the suite, targeted or not (split 'eval', stage 0, tag
    'general'; empty when ``evaluation.general_size`` is 0); ``removed_from_pools`` maps each stage index (1-based)
    to the pool rows removed because they repeated a held-out row (always 0 for built-in stages).
    """

    warmup: pa.Table
    proxy: pa.Table
    stages: list[StageSets]
    general: pa.Table = field(default_factory=EXAMPLE_SCHEMA.empty_table)
    removed_from_pools: dict[int, int] = field(default_factory=dict)

    def without_pools(self) -> Suite:
        """The same suite minus the pools, which travel to workers as Ray Datasets instead."""
        empty = self.stages[0].pool.schema.empty_table()
        return Suite(
            self.warmup,
            self.proxy,
            [StageSets(**{**s.__dict__, "pool": empty}) for s in self.stages],
            general=self.general,
            removed_from_pools=dict(self.removed_from_pools),
        )

    def future_proxy(self, kind: str, t: int) -> pa.Table:
        """LHAS's future-proxy set when selecting for stage t; it never holds stage t's or a later stage's data.

        'replay' (what the model should not lose): a sample of the warm-up mixture plus, from stage 2 on, an equal
        share of half the set from the probe samples of the stages already trained (1..t-1; labelled, outside every
        pool and eval set; each at most its size), the warm-up filling the rest. 'broad': the fixed ``proxy`` set: built-in, a mixture of every skill of the suite (so it knows
        the skill inventory, later targets included); real data, a sample of the first pool (a present-stage proxy).
        """
        if kind == "broad":
            return self.proxy
        if kind != "replay":
            raise ValueError(f"unknown future proxy {kind!r}; allowed: {list(PROXIES)}")
        n = self.proxy.num_rows
        past = [s.probe for s in self.stages if s.index < t and s.probe is not None and s.probe.num_rows]
        shares = np.diff(np.linspace(0, n // 2, len(past) + 1).astype(int)) if past else []
        parts = [
            _sample(p, min(int(k), p.num_rows), t, 3 + i) for i, (p, k) in enumerate(zip(past, shares, strict=True))
        ]
        taken = sum(p.num_rows for p in parts)
        parts.insert(0, _sample(self.warmup, min(n - taken, self.warmup.num_rows), t, 2))  # the warm-up fills the rest
        return pa.concat_tables(parts)


def build_suite(cfg: ExperimentConfig, seed: int | None = None) -> Suite:
    """Build every set of the experiment for trajectory ``seed`` (None: ``data.seed``), drawn with
    ``cfg.data_seed(seed)``: same (cfg, seed), same suite byte for byte; fails before Ray work."""
    data_seed = cfg.data.seed if seed is None else cfg.data_seed(seed)
    d, warm = cfg.data, cfg.training.warmup
    first_builtin = cfg.stages[0].source == "builtin"
    specs = [builtin.spec_from_stage(t, st) for t, st in enumerate(cfg.stages, start=1) if st.source == "builtin"]
    drawn = builtin.draw_suite(
        specs,
        data_seed,
        d.min_len,
        d.max_len,
        general_size=cfg.evaluation.general_size,
        warmup_size=warm.size if first_builtin else None,
        proxy_size=builtin.proxy_size(warm.size) if first_builtin else None,
    )
    # text probes first: every text pool then avoids every stage's probe chunks (all come from training documents)
    probes = {t: _text_probe(t, st, data_seed) for t, st in enumerate(cfg.stages, start=1) if st.source == "text"}
    avoid = _full_texts(list(probes.values()))
    stages = []
    for t, st in enumerate(cfg.stages, start=1):
        if st.source == "text":
            stages.append(_text_stage(t, st, data_seed, probes[t], avoid))
        elif st.source == "builtin":
            stages.append(
                StageSets(
                    t,
                    st.name,
                    list(st.targets),
                    st.budget,
                    drawn.pools[t],
                    drawn.evals[t],
                    drawn.oods[t],
                    drawn.probes[t],
                )
            )
        else:
            stages.append(_hf_stage(t, st, data_seed))
    general = _general(cfg, stages, drawn.general, data_seed)
    removed = _clean_pools(cfg, stages, general)
    if first_builtin:
        warmup, proxy = drawn.warmup, drawn.proxy
    else:  # real data: warm-up and future proxy are samples of the first pool, known before any stage runs
        warmup = stages[0].pool_sample(min(warm.size, stages[0].pool_rows), data_seed, 0)
        proxy = stages[0].pool_sample(min(512, stages[0].pool_rows), data_seed, 1)
    return Suite(warmup=warmup, proxy=proxy, stages=stages, general=general, removed_from_pools=removed)


def _clean_pools(cfg: ExperimentConfig, stages: list[StageSets], general: pa.Table) -> dict[int, int]:
    """Drop text/HF pool rows that repeat any held-out row (normalised prompt + answer); built-in pools are clean by
    construction. Returns the rows removed per stage."""
    heldout = [t for s in stages for t in (s.eval, s.probe, *s.ood.values()) if t is not None] + [general]
    removed = {}
    for s, st in zip(stages, cfg.stages, strict=True):
        if st.source == "builtin":
            removed[s.index] = 0
            continue
        if st.source == "hf" and st.hf.pool.stream:  # one batch-by-batch pass over the files
            from lhas_ray.tasks.streamed import scan_pool

            s.stream = scan_pool(st.hf.pool, s.index, _ids(s.index, "pool"), heldout)
            removed[s.index] = s.stream.removed
        else:
            s.pool, removed[s.index] = drop_leaks(s.pool, heldout)
        if removed[s.index]:
            logger.warning(
                "stage %d (%s): removed %d pool rows that repeat a held-out row (eval/probe/OOD/general, up to case "
                "and whitespace); %d rows left",
                s.index,
                s.name,
                removed[s.index],
                s.pool_rows,
            )
        else:
            logger.info("stage %d (%s): no pool row repeats a held-out row", s.index, s.name)
        if s.budget > s.pool_rows:
            raise ValueError(
                f"stage {s.name!r}: removing {removed[s.index]} pool rows that repeat held-out rows leaves "
                f"{s.pool_rows}, fewer than the budget ({s.budget}); lower the budget or use a larger pool"
            )
    return removed


def _general(cfg: ExperimentConfig, stages: list[StageSets], builtin_general: pa.Table, seed: int) -> pa.Table:
    """The general eval set of the suite: the built-in one, then one part per text domain and per named HF set."""
    n = cfg.evaluation.general_size
    parts = [builtin_general]
    if n:
        parts += _text_general(cfg, stages, n, seed) + _hf_general(cfg, n, seed)
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return EXAMPLE_SCHEMA.empty_table()
    table = pa.concat_tables(parts)
    ids = _ids(0, "general") + np.arange(table.num_rows, dtype=np.int64)
    return table.set_column(0, EXAMPLE_SCHEMA.field("example_id"), pa.array(ids))


def _relabel(table: pa.Table, skill: str) -> pa.Table:
    """A general-set part: stage 0, split 'eval', skill = the domain or set name, tag 'general'."""
    n = table.num_rows
    cols = {
        "stage": pa.array(np.zeros(n, dtype=np.int32)),
        "skill": pa.array([skill] * n, pa.string()),
        "split": pa.array(["eval"] * n, pa.string()),
        "tags": pa.array([["general"]] * n, pa.list_(pa.string())),
    }
    for name, col in cols.items():
        table = table.set_column(table.schema.get_field_index(name), EXAMPLE_SCHEMA.field(name), col)
    return table


def _text_general(cfg: ExperimentConfig, stages: list[StageSets], n: int, seed: int) -> list[pa.Table]:
    """n held-out examples of each text domain of any stage (chunked as in the first stage that names it), none
    repeating a text of a stage's eval/OOD set; fewer where the held-out text has fewer chunks."""
    from lhas_ray.tasks import text

    first: dict[str, object] = {}
    for st in cfg.stages:
        if st.source == "text":
            for dom in (*st.targets, *st.text.mix, *st.text.ood_domains):
                first.setdefault(dom, st.text)
    if not first:
        return []
    seen = _full_texts([t for s in stages for t in (s.eval, *s.ood.values())])
    out = []
    for i, (dom, tx) in enumerate(first.items()):
        kw = {"max_chars": tx.max_chars, "prompt_chars": tx.prompt_chars}
        part = text.text_examples(
            dom, n, seed, split="eval", stage=0, start_id=i * n, exclude=seen, clip=True, tags=["general"], **kw
        )
        out.append(_relabel(part, dom))
    return out


def _full_texts(tables: list[pa.Table]) -> np.ndarray:
    """prompt + answer of every row: the text chunk each text example was cut from."""
    parts = [np.asarray(pc.binary_join_element_wise(t.column("prompt"), t.column("answer"), "")) for t in tables]
    return np.concatenate(parts or [np.array([], dtype=object)]).astype(object)


def _hf_general(cfg: ExperimentConfig, n: int, seed: int) -> list[pa.Table]:
    """Up to n rows of each named HF general set (``hf.general`` of any stage), skill = the set's name."""
    from lhas_ray.tasks.hf import load_hf_examples

    specs: dict[str, dict] = {}
    for st in cfg.stages:
        if st.source != "hf":
            continue
        for name, spec in st.hf.general.items():
            if name in specs and specs[name] != spec:
                raise ValueError(
                    f"stage {st.name!r}: hf.general set {name!r} is declared with another spec by an earlier stage; "
                    "give one spec per general set name"
                )
            specs[name] = spec
    return [
        _relabel(load_hf_examples(spec, stage=0, split="eval", start_id=0, n=n, seed=seed, clip=True), name)
        for name, spec in specs.items()
    ]


def _sample(table: pa.Table, n: int, seed: int, salt: int) -> pa.Table:
    rows = np.sort(np.random.default_rng([seed, salt, 4242]).choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(rows, pa.int64()))


def _ids(stage: int, code: str, sub: int = 0) -> int:
    """First example_id of a set: the built-in suite's id layout (stage, split code, sub-set)."""
    return stage * builtin._STAGE_STRIDE + builtin.SPLIT_CODE[code] * builtin._SPLIT_STRIDE + sub * 100_000_000


def _shares(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split n into integer counts proportional to weights (largest remainder), so they sum to exactly n."""
    names = list(weights)
    raw = np.array([weights[k] for k in names], dtype=np.float64) * n / sum(weights.values())
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    return {k: int(c) for k, c in zip(names, counts, strict=True) if c}


def _text_kwargs(t: int, st, seed: int) -> dict:
    return {"seed": seed, "stage": t, "max_chars": st.text.max_chars, "prompt_chars": st.text.prompt_chars}


def _text_probe(t: int, st, seed: int) -> pa.Table:
    """A text stage's probe sample (training text of its targets); first checks that every source is installed."""
    from lhas_ray.tasks import text

    tx = st.text
    missing = text.missing_sources(sorted({*st.targets, *tx.mix, *tx.ood_domains}))
    if missing:
        raise ValueError(f"stage {st.name!r}: " + "; ".join(f"text domain {k!r}: {v}" for k, v in missing.items()))
    counts = _shares(dict.fromkeys(st.targets, 1.0), st.probe_size)
    return text.text_mixture(counts, split="probe", start_id=_ids(t, "probe"), **_text_kwargs(t, st, seed))


def _text_stage(t: int, st, seed: int, probe: pa.Table, avoid: np.ndarray) -> StageSets:
    """A text stage's sets; its pool never draws a chunk in ``avoid`` (every text stage's probe chunks)."""
    from lhas_ray.tasks import text

    tx, kw = st.text, _text_kwargs(t, st, seed)
    roles = {dom: "target" if dom in st.targets else "other" for dom in tx.mix}
    pool = text.text_mixture(
        _shares(tx.mix, st.pool.size), split="pool", start_id=_ids(t, "pool"), roles=roles, exclude=avoid, **kw
    )
    evals = [
        text.text_examples(dom, st.eval_size, split="eval", start_id=_ids(t, "eval", i), tags=["target"], **kw)
        for i, dom in enumerate(st.targets)
    ]
    ood = {
        f"ood/{dom}": text.text_examples(dom, st.ood_size, split="ood", start_id=_ids(t, "ood/length", i), **kw)
        for i, dom in enumerate(tx.ood_domains)
    }
    return StageSets(t, st.name, list(st.targets), st.budget, pool, pa.concat_tables(evals), ood, probe)


def _hf_stage(t: int, st, seed: int) -> StageSets:
    from lhas_ray.tasks.hf import load_hf_examples

    if st.hf.pool.stream:  # read in _clean_pools, once the held-out rows it must avoid are known
        pool = EXAMPLE_SCHEMA.empty_table()
    else:
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
