"""A synthetic lhas_ray run written through ResultStore (parts + commit markers + config.yaml), for tests and benchmarks.

No model is trained: the accuracy matrix of each trajectory follows a small generative rule in which a selector's
``focus`` (share of its budget on the target skill) buys immediate accuracy at the cost of forgetting, related-skill
accuracy, adaptation speed and the never-targeted skills. Same arguments, same bytes.

The eval sets follow the run's output contract: ``eval/stage<j>`` (eval_stage j) with a target and a related skill
drawn from ``TARGETED``; OOD sets ``ood/stage<j>-<kind>`` for every stage j and kind (eval_stage null, they belong to
stage j); and the ``general`` set (eval_set 'general', eval_stage null) with one accuracy row per skill of ``SKILLS``
plus an 'all' row, at every stage 0..T. The skills of ``SKILLS`` outside ``TARGETED`` are never targeted by any stage:
they start at a base level shared by every selector of a seed and decay faster the more focused the selector is.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import yaml

from lhas_ray import schemas  # the output contract, declared once in the package
from lhas_ray.store import ResultStore, Unit

SKILLS = ("copy", "reverse", "sort", "add", "count", "lookup")  # every skill of the suite: the general set's
TARGETED = SKILLS[:4]  # what the stage eval sets hold (target, related); count and lookup: never targeted
OOD_KINDS = ("long", "format")
GENERAL_SET = "general"
DEFAULT_SELECTORS = ("random", "loss", "rds")
# focus in [0, 1] per known selector name; unknown names get a value from a hash of the name.
FOCUS = {"random": 0.3, "loss": 0.2, "rds": 0.95, "less": 0.8, "lhas": 0.45, "kcenter": 0.1, "facility": 0.25}
PHASES = ("scoring", "selection", "training", "evaluation", "probe")

METRICS_SCHEMA = schemas.METRICS
CURVES_SCHEMA = schemas.CURVES
TIMINGS_SCHEMA = schemas.TIMINGS


def _focus(selector: str) -> float:
    return FOCUS.get(selector, (zlib.crc32(selector.encode()) % 1000) / 1000)


def synthetic_matrix(selector: str, seed: int, n_stages: int) -> np.ndarray:
    """The accuracy matrix R[i, j] (i = 0..T, j = 0..T, column 0 NaN) of one synthetic trajectory."""
    rng = np.random.default_rng([seed, zlib.crc32(selector.encode())])
    base_rng = np.random.default_rng([seed, 7])  # the base model is the same for every selector of a seed
    f = _focus(selector)
    R = np.full((n_stages + 1, n_stages + 1), np.nan)
    R[0, 1:] = 0.05 + 0.1 * base_rng.random(n_stages)
    for t in range(1, n_stages + 1):
        prev = R[t - 1, 1:]
        row = prev.copy()
        row[: t - 1] = prev[: t - 1] * (1 - (0.05 + 0.5 * f**2)) + 0.02 * rng.standard_normal(t - 1)  # forgetting
        row[t - 1] = prev[t - 1] + 0.35 + 0.35 * f + 0.03 * rng.standard_normal()  # learning the target
        row[t:] = prev[t:] + 0.08 * (1 - f) + 0.01 * rng.standard_normal(n_stages - t)  # forward transfer
        R[t, 1:] = np.clip(row, 0.0, 1.0)
    return R


def _stage_skills(j: int) -> tuple[str, str]:
    """(target, related) skill of stage j's eval set."""
    return TARGETED[(j - 1) % len(TARGETED)], TARGETED[j % len(TARGETED)]


def _eval_skill_rows(R: np.ndarray, stage: int, j: int, f: float) -> dict[str, float]:
    """Per-skill accuracy on stage j's eval set after `stage`: focused selectors push the target up, the related
    skill down (equal shares, so their mean stays R[stage, j])."""
    acc = float(R[stage, j])
    target, related = _stage_skills(j)
    spread = min(0.4 * f, acc, 1 - acc)
    return {target: acc + spread, related: acc - spread}


def synthetic_general(selector: str, seed: int, R: np.ndarray) -> np.ndarray:
    """G[t, k]: accuracy on skill SKILLS[k] of the general set after stage t (t = 0..T) of one trajectory.

    A targeted skill scores the mean of its per-skill rows in the stages' eval sets that hold it. A never-targeted
    skill starts at a base level (the warm-up's, the same for every selector of a seed) and loses a share
    0.05 + 0.3 * focus of it per stage, plus a little noise: the more focused the selector, the more it loses.
    """
    n_stages = R.shape[0] - 1
    f = _focus(selector)
    rng = np.random.default_rng([seed, zlib.crc32(selector.encode()), 3])
    base = 0.4 + 0.3 * np.random.default_rng([seed, 11]).random(len(SKILLS))
    G = np.full((n_stages + 1, len(SKILLS)), np.nan)
    for t in range(n_stages + 1):
        held: dict[str, list[float]] = {}
        for j in range(1, n_stages + 1):
            for skill, v in _eval_skill_rows(R, t, j, f).items():
                held.setdefault(skill, []).append(v)
        for k, skill in enumerate(SKILLS):
            if skill in held:
                G[t, k] = np.mean(held[skill])
            elif t == 0:
                G[t, k] = base[k]
            else:
                G[t, k] = G[t - 1, k] * (1 - (0.05 + 0.3 * f)) + 0.01 * rng.standard_normal()
    return np.clip(G, 0.0, 1.0)


def _unit_tables(
    selector: str,
    seed: int,
    stage: int,
    R: np.ndarray,
    G: np.ndarray | None,
    probe_steps: int,
    ood_kinds: Sequence[str],
):
    """The metrics, curves and timings rows of one unit (selector, seed, stage) as pyarrow tables."""
    n_stages = R.shape[0] - 1
    f = _focus(selector)
    rng = np.random.default_rng([seed, zlib.crc32(selector.encode()), stage, 1])
    m: dict[str, list] = {k: [] for k in METRICS_SCHEMA.names}

    def add(eval_set, eval_stage, skill, acc):
        for metric, value in (("accuracy", acc), ("loss", float(-np.log(acc + 0.05)))):
            for k, v in zip(
                METRICS_SCHEMA.names, (selector, seed, stage, eval_set, eval_stage, skill, metric, value), strict=True
            ):
                m[k].append(v)

    for j in range(1, n_stages + 1):
        add(f"eval/stage{j}", j, "all", float(R[stage, j]))
        for skill, v in _eval_skill_rows(R, stage, j, f).items():
            add(f"eval/stage{j}", j, skill, v)
    for j in range(1, n_stages + 1):  # every stage's OOD sets, at every checkpoint; each belongs to stage j
        for k, kind in enumerate(ood_kinds):
            add(f"ood/stage{j}-{kind}", None, "all", float(np.clip(R[stage, j] * (0.8 - 0.3 * f) - 0.05 * k, 0, 1)))
    if G is not None:
        for k, skill in enumerate(SKILLS):
            add(GENERAL_SET, None, skill, float(G[stage, k]))
        add(GENERAL_SET, None, "all", float(G[stage].mean()))  # equal examples per skill
    metrics = pa.table(m, schema=METRICS_SCHEMA)

    c: dict[str, list] = {k: [] for k in CURVES_SCHEMA.names}

    def curve(split, metric, steps, values):
        for s, v in zip(steps, values, strict=True):
            for k, x in zip(CURVES_SCHEMA.names, (selector, seed, stage, int(s), split, metric, float(v)), strict=True):
                c[k].append(x)

    if stage >= 1:
        steps = np.arange(0, 50, 10)
        curve("train", "loss", steps, 2.0 * np.exp(-steps / 30) + 0.1 * rng.random(len(steps)))
        curve("eval", "accuracy", steps, np.linspace(R[stage - 1, stage], R[stage, stage], len(steps)))
    if stage < n_stages:  # the probe from checkpoint `stage` adapts to stage + 1
        steps = np.arange(probe_steps + 1)
        start, rate = R[stage, stage + 1], 0.25 * (1.1 - f)
        curve("probe", "accuracy", steps, 1 - (1 - start) * np.exp(-rate * steps))
        curve("probe", "loss", steps, 2.0 * np.exp(-rate * steps))
    curves = pa.table(c, schema=CURVES_SCHEMA)

    phases = ("ray_start", "evaluation") if stage == 0 else PHASES
    secs = 0.5 + 3 * rng.random(len(phases))
    timings = pa.table(
        {
            "selector": [selector] * len(phases),
            "seed": [seed] * len(phases),
            "stage": [stage] * len(phases),
            "phase": list(phases),
            "seconds": secs,
        },
        schema=TIMINGS_SCHEMA,
    )
    return metrics, curves, timings


def default_config(
    *,
    selectors: Sequence[str] = DEFAULT_SELECTORS,
    seeds: Sequence[int] = (0, 1),
    n_stages: int = 3,
    probe_steps: int = 5,
    forgetting: str = "since_trained",
    resample: str = "fixed",
    baselines: Sequence[str] = ("random",),
) -> dict:
    """The config.yaml a synthetic run writes: what the report reads from it (selectors, seeds, stages, evaluation
    settings, probe steps for the censoring of steps_to_threshold, the data draw)."""
    return {
        "selectors": [{"name": s} for s in selectors],
        "seeds": list(seeds),
        "stages": [{"name": f"stage{t}"} for t in range(1, n_stages + 1)],
        "data": {"seed": 0, "resample": resample},
        "probe": {"steps": probe_steps},
        "evaluation": {
            "lca_beta": min(3, probe_steps),
            "probe_threshold": 0.5,
            "forgetting": forgetting,
            "baselines": list(baselines),
        },
    }


def build_synthetic_run(
    out: str,
    *,
    selectors: Sequence[str] = DEFAULT_SELECTORS,
    seeds: Sequence[int] = (0, 1),
    n_stages: int = 3,
    probe_steps: int = 5,
    ood_sets: Sequence[str] = OOD_KINDS,
    general: bool = True,
    drop: Iterable[tuple[str, int, int]] = (),
    config: dict | None = None,
    write_config: bool = True,
) -> ResultStore:
    """Write a complete synthetic run to ``out`` (minus the units in ``drop``) and return its store.

    ``ood_sets``: the OOD kinds; every stage j gets one set ``ood/stage<j>-<kind>`` per kind ('ood/long' is read as
    'long'). ``general``: write the general set (False: a run from before it existed, or ``general_size: 0``).
    ``config``: the whole config.yaml (default: ``default_config(...)``).
    """
    store = ResultStore(out)
    dropped = {(s, int(r), int(t)) for s, r, t in drop}
    kinds = [k.split("/")[-1] for k in ood_sets]
    if write_config:
        cfg = config or default_config(selectors=selectors, seeds=seeds, n_stages=n_stages, probe_steps=probe_steps)
        store.write_bytes("config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    for selector in selectors:
        for seed in seeds:
            R = synthetic_matrix(selector, seed, n_stages)
            G = synthetic_general(selector, seed, R) if general else None
            for stage in range(n_stages + 1):
                if (selector, seed, stage) in dropped:
                    continue
                unit = Unit(selector, seed, stage)
                for name, table in zip(
                    ("metrics", "curves", "timings"),
                    _unit_tables(selector, seed, stage, R, G, probe_steps, kinds),
                    strict=True,
                ):
                    store.write_part(name, unit, table)
                store.commit(unit)
    return store


def long_metrics_from_matrix(R: np.ndarray, selector: str = "s", seed: int = 0) -> pa.Table:
    """The in-distribution accuracy rows (skill 'all') of one hand-written matrix R[i, j] (column 0 ignored)."""
    rows = [
        (selector, seed, i, f"eval/stage{j}", j, "all", "accuracy", float(R[i, j]))
        for i in range(R.shape[0])
        for j in range(1, R.shape[1])
    ]
    return pa.table(list(map(list, zip(*rows, strict=True))), schema=METRICS_SCHEMA)
