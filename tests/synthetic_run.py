"""A synthetic lhas_ray run written through ResultStore (parts + commit markers + config.yaml), for tests and benchmarks.

No model is trained: the accuracy matrix of each trajectory follows a small generative rule in which a selector's
``focus`` (share of its budget on the target skill) buys immediate accuracy at the cost of forgetting, related-skill
accuracy and adaptation speed. Same arguments, same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import yaml

from lhas_ray.store import ResultStore, Unit

SKILLS = ("copy", "reverse", "sort", "add", "count", "lookup")
DEFAULT_SELECTORS = ("random", "loss", "rds")
# focus in [0, 1] per known selector name; unknown names get a value from a hash of the name.
FOCUS = {"random": 0.3, "loss": 0.2, "rds": 0.95, "less": 0.8, "lhas": 0.45, "kcenter": 0.1, "facility": 0.25}
PHASES = ("scoring", "selection", "training", "evaluation", "probe")

METRICS_SCHEMA = pa.schema(
    [
        ("selector", pa.string()),
        ("seed", pa.int64()),
        ("stage", pa.int64()),
        ("eval_set", pa.string()),
        ("eval_stage", pa.int64()),
        ("skill", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
CURVES_SCHEMA = pa.schema(
    [
        ("selector", pa.string()),
        ("seed", pa.int64()),
        ("stage", pa.int64()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
TIMINGS_SCHEMA = pa.schema(
    [
        ("selector", pa.string()),
        ("seed", pa.int64()),
        ("stage", pa.int64()),
        ("phase", pa.string()),
        ("seconds", pa.float64()),
    ]
)


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


def _unit_tables(selector: str, seed: int, stage: int, R: np.ndarray, probe_steps: int, ood_sets: Sequence[str]):
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
        acc = float(R[stage, j])
        add(f"eval/stage{j}", j, "all", acc)
        target, related = SKILLS[(j - 1) % len(SKILLS)], SKILLS[j % len(SKILLS)]
        spread = min(0.4 * f, acc, 1 - acc)  # focused selectors: target up, related down; the mean stays acc
        add(f"eval/stage{j}", j, target, acc + spread)
        add(f"eval/stage{j}", j, related, acc - spread)
    seen = R[stage, 1 : max(stage, 1) + 1].mean()
    for k, name in enumerate(ood_sets):
        add(name, None, "all", float(np.clip(seen * (0.8 - 0.3 * f) - 0.05 * k, 0, 1)))
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


def build_synthetic_run(
    out: str,
    *,
    selectors: Sequence[str] = DEFAULT_SELECTORS,
    seeds: Sequence[int] = (0, 1),
    n_stages: int = 3,
    probe_steps: int = 5,
    ood_sets: Sequence[str] = ("ood/long", "ood/format"),
    drop: Iterable[tuple[str, int, int]] = (),
    config: dict | None = None,
    write_config: bool = True,
) -> ResultStore:
    """Write a complete synthetic run to ``out`` (minus the units in ``drop``) and return its store."""
    store = ResultStore(out)
    dropped = {(s, int(r), int(t)) for s, r, t in drop}
    if write_config:
        cfg = config or {
            "selectors": [{"name": s} for s in selectors],
            "seeds": list(seeds),
            "stages": [{"name": f"stage{t}"} for t in range(1, n_stages + 1)],
            "evaluation": {"lca_beta": min(3, probe_steps), "probe_threshold": 0.5},
        }
        store.write_bytes("config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    for selector in selectors:
        for seed in seeds:
            R = synthetic_matrix(selector, seed, n_stages)
            for stage in range(n_stages + 1):
                if (selector, seed, stage) in dropped:
                    continue
                unit = Unit(selector, seed, stage)
                for name, table in zip(
                    ("metrics", "curves", "timings"),
                    _unit_tables(selector, seed, stage, R, probe_steps, ood_sets),
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
