"""The controlled capability suite: the sets of every stage, drawn from the skills of ``skills.py``.

Data hygiene (``draw_suite``): the held-out sets (every stage's eval, probe and OOD sets, the ``general`` set over
every skill, the LHAS proxy) are drawn first, each with distinct prompts and disjoint from the ones before; pools and
the warm-up mixture are then drawn around them by vectorised rejection sampling, so no prompt a model is judged on
(or probed with) is ever a prompt it could train on. ``capacity.capacity_problems`` refuses a config whose lengths leave too
few distinct prompts for that. Same ``data.seed``: same tables, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lhas_ray.tasks.noise import corrupt, near_duplicates
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA
from lhas_ray.tasks.skills import (  # noqa: F401  (the suite's vocabulary, re-exported for its users)
    ANSWER_ALPHABET,
    DIGITS,
    LETTERS,
    OPS,
    SKILLS,
    STRING_SKILLS,
    cat,
    distinct_prompts,
    generate,
    random_chars,
    related_skills,
    skill_index,
    string_answer,
    to_str,
)

SPLIT_CODE = {"pool": 0, "eval": 1, "probe": 2, "ood/length": 3, "ood/format": 4, "warmup": 5, "proxy": 6, "general": 7}
_STAGE_STRIDE = 10_000_000_000
_SPLIT_STRIDE = 1_000_000_000


# --- sets --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSpec:
    """What the suite needs to know about one stage (a view of the config, so tasks do not import it)."""

    stage: int
    targets: tuple[str, ...]
    pool_size: int
    target_share: float
    related_share: float
    noise: float
    duplicates: float
    eval_size: int
    ood: tuple[str, ...]
    ood_size: int
    probe_size: int


def spec_from_stage(stage: int, st) -> SuiteSpec:
    """The SuiteSpec of a built-in stage config (``StageConfig``; ``stage`` is 1-based)."""
    return SuiteSpec(
        stage=stage,
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


def proxy_size(warmup_size: int) -> int:
    """Size of the built-in LHAS future-proxy mixture for a given warm-up size."""
    return max(64, min(warmup_size, 512))


def _table(stage: int, split: str, code: str, skills: np.ndarray, prompts, answers, tags) -> pa.Table:
    ids = stage * _STAGE_STRIDE + SPLIT_CODE[code] * _SPLIT_STRIDE + np.arange(len(skills), dtype=np.int64)
    return pa.table(
        {
            "example_id": pa.array(ids, pa.int64()),
            "stage": pa.array(np.full(len(skills), stage, np.int32)),
            "skill": pa.array(np.asarray(skills).astype(str), pa.string()),
            "prompt": pa.array(np.asarray(prompts).astype(str), pa.string()),
            "answer": pa.array(np.asarray(answers).astype(str), pa.string()),
            "split": pa.array([split] * len(skills), pa.string()),
            "tags": tags if isinstance(tags, pa.Array) else pa.array(tags, pa.list_(pa.string())),
        },
        schema=EXAMPLE_SCHEMA,
    )


def _tag_lists(first: np.ndarray, **flags: np.ndarray) -> pa.Array:
    """Per-row tag lists: ``first[i]``, then each flag's name where that row's flag is set (vectorised)."""
    cols = [np.asarray(first, dtype=object)] + [np.where(m, name, None) for name, m in flags.items()]
    mat = np.stack(cols, axis=1)
    keep = mat != None  # noqa: E711 (element-wise)
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    values = pa.array(mat[keep].astype(str).tolist() if keep.any() else [], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=pa.list_(pa.string()))


def _rng(seed: int, stage: int, code: str) -> np.random.Generator:
    return np.random.default_rng([seed, stage, SPLIT_CODE[code]])


def _balanced(skills: list[str], n: int) -> np.ndarray:
    """n skill labels spread evenly over skills (round-robin), before shuffling."""
    return np.array(skills, dtype=object)[np.arange(n) % len(skills)].astype(str) if n else np.array([], dtype=str)


def _prompt_array(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("prompt").to_numpy(zero_copy_only=False)).astype(str)


_MAX_ROUNDS = 1000  # rejection-sampling rounds before a set that cannot be filled is an error


def _draw(
    skills: np.ndarray,
    rng: np.random.Generator,
    lo: int,
    hi: int,
    fmt: str = "standard",
    exclude: np.ndarray | None = None,
    distinct: bool = False,
    where: str = "set",
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts and answers for ``skills`` (one row each) whose prompts avoid ``exclude`` and, when ``distinct``, each
    other: a vectorised batch, then only the rejected rows are drawn again (same skill), for a bounded number of
    rounds."""
    n = len(skills)
    if n == 0:
        return np.array([], dtype=str), np.array([], dtype=str)
    prompts = np.empty(n, dtype=object)
    answers = np.empty(n, dtype=object)
    taken = np.asarray(exclude if exclude is not None else [], dtype=str)
    pending = np.arange(n)
    for _ in range(_MAX_ROUNDS):
        p, a = generate(skills[pending], rng, lo, hi, fmt)
        bad = np.isin(p, taken) if len(taken) else np.zeros(len(p), dtype=bool)
        if distinct:
            first = np.zeros(len(p), dtype=bool)
            first[np.unique(p, return_index=True)[1]] = True
            bad |= ~first
        ok = ~bad
        prompts[pending[ok]], answers[pending[ok]] = p[ok], a[ok]
        if distinct:
            taken = np.concatenate([taken, p[ok]])
        pending = pending[bad]
        if not len(pending):
            return prompts.astype(str), answers.astype(str)
    short = sorted(set(skills[pending].tolist()))
    raise ValueError(
        f"{where}: could not draw {len(pending)} of {n} examples of {short} whose prompts are "
        f"{'distinct and ' if distinct else ''}outside the held-out sets after {_MAX_ROUNDS} rounds: lengths "
        f"{lo}..{hi} leave too few distinct prompts; raise data.max_len or lower eval/probe/ood/general sizes"
    )


def pool(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The candidate pool: target, related and unrelated skills, label noise and near-duplicates.

    No pool prompt (near-duplicates included) is in ``exclude`` (the held-out prompts); pool rows may repeat each
    other, which is what near-duplicates are for.
    """
    rng = _rng(seed, spec.stage, "pool")
    targets = list(spec.targets)
    related = related_skills(targets)
    unrelated = [s for s in SKILLS if s not in targets and s not in related]
    n_target = round(spec.pool_size * spec.target_share)
    n_related = round(spec.pool_size * spec.related_share) if related else 0
    n_unrelated = spec.pool_size - n_target - n_related
    groups = [
        (targets, n_target, "target"),
        (related, n_related, "related"),
        (unrelated or related or targets, n_unrelated, "unrelated"),
    ]
    skills = np.concatenate([_balanced(g, n) for g, n, _ in groups])
    role = np.concatenate([np.full(n, name) for _, n, name in groups])
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, where=f"stage {spec.stage} pool")
    prompts, answers = prompts.astype(object), answers.astype(object)  # edits below may change string widths

    # near-duplicates of other pool rows: string skills get one input symbol changed (answer recomputed),
    # the others are exact copies
    n_dup = round(spec.pool_size * spec.duplicates)
    dup_rows = rng.choice(spec.pool_size, size=n_dup, replace=False)
    sources = rng.integers(0, spec.pool_size, size=n_dup)
    sources = np.where(sources == dup_rows, (sources + 1) % spec.pool_size, sources)
    skills[dup_rows] = skills[sources]
    role[dup_rows] = role[sources]
    prompts[dup_rows], answers[dup_rows] = prompts[sources], answers[sources]
    for skill in STRING_SKILLS:  # string skills: change one symbol, recompute
        rows = dup_rows[skills[dup_rows] == skill]
        if len(rows):
            prompts[rows], answers[rows] = near_duplicates(skill, prompts[rows], answers[rows], rng, exclude)

    # label noise: the answer of another example of the same skill and answer length, so it looks plausible
    n_noise = round(spec.pool_size * spec.noise)
    noise_rows = rng.choice(spec.pool_size, size=n_noise, replace=False)
    answers[noise_rows] = corrupt(skills, answers, noise_rows, rng)

    is_dup = np.zeros(spec.pool_size, dtype=bool)
    is_dup[dup_rows] = True
    is_noise = np.zeros(spec.pool_size, dtype=bool)
    is_noise[noise_rows] = True
    order = rng.permutation(spec.pool_size)
    tags = _tag_lists(role[order], duplicate=is_dup[order], noise=is_noise[order])
    return _table(spec.stage, "pool", "pool", skills[order], prompts[order], answers[order], tags)


def eval_set(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The stage's in-distribution eval set: eval_size examples of each target skill, distinct prompts, none in
    ``exclude``."""
    rng = _rng(seed, spec.stage, "eval")
    skills = np.repeat(np.array(spec.targets), spec.eval_size)
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=True, where=f"stage {spec.stage} eval")
    return _table(spec.stage, "eval", "eval", skills, prompts, answers, [["target"]] * len(skills))


def ood_sets(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> dict[str, pa.Table]:
    """OOD sets of the stage's targets: 'length' (operands longer than seen) and 'format' (unseen prompt layout);
    distinct prompts, none in ``exclude`` nor in another of these sets."""
    out = {}
    taken = np.asarray(exclude if exclude is not None else [], dtype=str)
    skills = np.repeat(np.array(spec.targets), spec.ood_size)
    for kind in spec.ood:
        rng = _rng(seed, spec.stage, f"ood/{kind}")
        where = f"stage {spec.stage} ood/{kind}"
        if kind == "length":
            prompts, answers = _draw(skills, rng, hi + 1, hi + 3, exclude=taken, distinct=True, where=where)
        else:
            prompts, answers = _draw(skills, rng, lo, hi, "spaced", exclude=taken, distinct=True, where=where)
        taken = np.concatenate([taken, prompts])
        out[f"ood/{kind}"] = _table(spec.stage, "ood", f"ood/{kind}", skills, prompts, answers, [[kind]] * len(skills))
    return out


def probe_set(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The fixed, selector-independent probe sample of this stage (trained on briefly from checkpoint t-1);
    distinct prompts, none in ``exclude``."""
    rng = _rng(seed, spec.stage, "probe")
    skills = _balanced(list(spec.targets), spec.probe_size)
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=True, where=f"stage {spec.stage} probe")
    return _table(spec.stage, "probe", "probe", skills, prompts, answers, [["target"]] * len(skills))


def mixture_set(kind: str, size: int, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """A broad mixture of every skill, no noise: ``warmup`` makes the base checkpoint (stage 0); ``proxy`` is the
    future-proxy set of LHAS, a stand-in for "whatever comes next" that is never the real next stage.

    No prompt is in ``exclude``; the proxy (held out from training) also has distinct prompts, the warm-up (training
    data, like a pool) may repeat them.
    """
    rng = _rng(seed, 0, kind)
    skills = _balanced(list(SKILLS), size)[rng.permutation(size)]
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=kind != "warmup", where=kind)
    return _table(0, "pool", kind, skills, prompts, answers, [[kind]] * size)


def general_set(size: int, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The 'general' eval set: ``size`` examples of every skill (targeted or not), in-distribution lengths, standard
    format, distinct prompts, none in ``exclude``; stage 0, split 'eval', tag 'general'."""
    rng = _rng(seed, 0, "general")
    skills = np.repeat(np.array(SKILLS), size)
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=True, where="general")
    return _table(0, "eval", "general", skills, prompts, answers, [["general"]] * len(skills))


@dataclass
class DrawnSuite:
    """Every built-in set of a run, keyed by 1-based stage; ``heldout`` is every held-out prompt."""

    pools: dict[int, pa.Table] = field(default_factory=dict)
    evals: dict[int, pa.Table] = field(default_factory=dict)
    probes: dict[int, pa.Table] = field(default_factory=dict)
    oods: dict[int, dict[str, pa.Table]] = field(default_factory=dict)
    general: pa.Table = field(default_factory=EXAMPLE_SCHEMA.empty_table)
    proxy: pa.Table | None = None
    warmup: pa.Table | None = None
    heldout: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))


def draw_suite(
    specs: list[SuiteSpec],
    seed: int,
    lo: int,
    hi: int,
    *,
    general_size: int = 0,
    warmup_size: int | None = None,
    proxy_size: int | None = None,
) -> DrawnSuite:
    """The built-in sets of a run, held-out sets first: every stage's eval, probe and OOD sets, then the general
    set and the proxy, each with distinct prompts and disjoint from those before; then every pool and the warm-up
    mixture, drawn around all of them (pools and warm-up may share prompts: both are training data).

    ``warmup_size``/``proxy_size`` None: no warm-up/proxy mixture (a run whose first stage is not built-in).
    """
    out = DrawnSuite()
    taken = out.heldout

    def hold(table: pa.Table) -> pa.Table:
        nonlocal taken
        taken = np.concatenate([taken, _prompt_array(table)])
        return table

    for spec in specs:
        out.evals[spec.stage] = hold(eval_set(spec, seed, lo, hi, taken))
        out.probes[spec.stage] = hold(probe_set(spec, seed, lo, hi, taken))
        out.oods[spec.stage] = {k: hold(t) for k, t in ood_sets(spec, seed, lo, hi, taken).items()}
    if specs and general_size:
        out.general = hold(general_set(general_size, seed, lo, hi, taken))
    if proxy_size:
        out.proxy = hold(mixture_set("proxy", proxy_size, seed, lo, hi, taken))
    out.heldout = taken
    for spec in specs:
        out.pools[spec.stage] = pool(spec, seed, lo, hi, taken)
    if warmup_size:
        out.warmup = mixture_set("warmup", warmup_size, seed, lo, hi, taken)
    return out
