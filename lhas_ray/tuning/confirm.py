"""Held-out confirmation of a sweep: the tuned weights beside the baselines, on seeds and data the sweep never saw.

A sweep tunes on the config's ``seeds`` (the development seeds) and their data draws. ``confirm(OUT)`` (``lhas-ray
confirm OUT``, and the end of ``lhas-ray tune`` when the config names ``tune.heldout_seeds``) then

1. runs the config's other selectors on the development seeds: the sweep's own baseline runs, ``OUT/baselines/``;
2. picks the best of them by the immediate score (``tune.immediate``), random aside: the best myopic selector;
3. writes ``OUT/confirm_config.yaml`` from ``OUT/best_config.yaml``: the tuned LHAS (label ``lhas_tuned``), random,
   that best myopic selector and ``tune.confirm_baselines`` on ``tune.heldout_seeds``, every seed with its own data
   draw (``data.resample: per_seed``). It is an ordinary config: ``lhas-ray run OUT/confirm_config.yaml`` reruns it;
4. runs it into ``OUT/confirm/`` and writes ``OUT/confirmation.parquet``: the tuned LHAS minus each baseline, paired
   by seed, at each seed's last stage. Held-out rows are tested in two declared Holm families: ``headline`` (the
   tune objective, one-sided: tuned LHAS better) and ``metrics`` (immediate score, acc, forgetting,
   untrained_retention, lca; two-sided). In-sample rows (the best trial against the baseline runs, on the seeds the
   weights were chosen on) are shown for comparison and never tested: they are optimistic by construction.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from lhas_ray import schemas
from lhas_ray.config import ConfigError, ExperimentConfig, config_from_dict, dump_config
from lhas_ray.evaluation.definitions import HIGHER_IS_BETTER
from lhas_ray.evaluation.stats import holm, min_attainable_p, sign_flip_pvalue, t_interval
from lhas_ray.store import ResultStore
from lhas_ray.tuning.baselines import (  # noqa: F401  (BASELINES_DIR, baseline_config: part of this module's API)
    BASELINES_DIR,
    IMMEDIATE,
    OBJECTIVE,
    Runner,
    baseline_config,
    best_myopic,
    run_baselines,
    seed_scores,
)

log = logging.getLogger("lhas_ray.confirmation")

TUNED = "lhas_tuned"
CONFIRM_DIR = "confirm"
CONFIRM_CONFIG, CONFIRMATION = "confirm_config.yaml", "confirmation.parquet"
COMPARED = (IMMEDIATE, "acc", "forgetting", "untrained_retention", "lca")  # the metrics family, in report order
HELDOUT, IN_SAMPLE = "held-out", "in-sample"
CONFIRMATION_SCHEMA = schemas.CONFIRMATION


@dataclass
class Confirmation:
    """What a confirmation produced: its config, the chosen baselines (key -> role) and the tests table."""

    out: str
    config: ExperimentConfig
    baselines: dict[str, str]
    table: pd.DataFrame
    alpha: float = 0.05


# --- the configs ------------------------------------------------------------------------------------------------------
def confirm_config(best: ExperimentConfig, tuned_key: str, baselines: list[str], seeds: list[int]) -> ExperimentConfig:
    """``best`` (best_config.yaml) on the held-out ``seeds``, each with its own data draw: the tuned lhas selector
    (labelled ``lhas_tuned``) and the ``baselines``, each baseline also tested against in the run's own report."""
    raw = best.model_dump(mode="json")
    by_key = {s.key: s.model_dump(mode="json") for s in best.selectors}
    tuned = {**by_key[tuned_key], "label": TUNED}
    raw["selectors"] = [tuned, *(by_key[k] for k in baselines)]
    raw["seeds"] = list(seeds)
    raw["data"]["resample"] = "per_seed"
    raw["evaluation"]["baselines"] = list(baselines)
    raw["tune"]["development_seeds"] = list(best.seeds)
    raw["tune"]["heldout_seeds"] = []
    raw.update({"name": f"{best.name.removesuffix('-sweep')}-confirm", "output": None})
    return config_from_dict(raw, source="confirm config")


def check_unseen(sweep: ExperimentConfig, confirm: ExperimentConfig) -> None:
    """Refuse a confirmation that shares a seed or a data draw with the sweep (the whole point is that it cannot)."""
    if shared := sorted(set(sweep.seeds) & set(confirm.seeds)):
        raise ConfigError(f"held-out seeds {shared} are development seeds of the sweep ({sweep.seeds})")
    dev = {sweep.data_seed(s) for s in sweep.seeds}
    if shared := sorted(s for s in confirm.seeds if confirm.data_seed(s) in dev):
        raise ConfigError(f"held-out seeds {shared} would draw the same data as a development seed; pick others")


# --- the tests --------------------------------------------------------------------------------------------------------
def paired_rows(
    scores: pd.DataFrame, tuned: str, baselines: dict[str, str], metric: str, sample: str, level: float
) -> pd.DataFrame:
    """tuned - baseline on one metric, paired by seed (seeds missing either side are left out), per baseline."""
    wide = scores[metric].unstack("selector")
    rows = []
    for base, role in baselines.items():
        pair = wide[[tuned, base]].dropna()
        d = (pair[tuned] - pair[base]).to_numpy(np.float64)
        mean, lo, hi = (float(np.ravel(x)[0]) for x in t_interval(d[None], level)) if len(d) else (math.nan,) * 3
        higher = HIGHER_IS_BETTER.get(metric, True)
        rows.append(
            {
                "sample": sample,
                "baseline": base,
                "role": role,
                "metric": metric,
                "higher_is_better": higher,
                "n_seeds": len(d),
                "tuned": float(pair[tuned].mean()) if len(d) else math.nan,
                "base": float(pair[base].mean()) if len(d) else math.nan,
                "diff": mean,
                "lo": lo,
                "hi": hi,
                "_d": d,
            }
        )
    return pd.DataFrame(rows)


def confirmation_table(
    heldout: pd.DataFrame,
    tuned: str,
    baselines: dict[str, str],
    *,
    in_sample: pd.DataFrame | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """The held-out tests (families headline and metrics, each Holm-adjusted) and the untested in-sample rows.

    headline: the objective, H1 "tuned LHAS is better" (one-sided exact sign-flip); metrics: each of ``COMPARED``,
    two-sided. p-values are left NaN for in-sample rows and for metrics with fewer than two paired seeds.
    """
    parts = []
    for family, metrics, alternative in (
        ("headline", [OBJECTIVE], "greater"),
        ("metrics", list(COMPARED), "two-sided"),
    ):
        rows = pd.concat(
            [paired_rows(heldout, tuned, baselines, m, HELDOUT, level) for m in metrics], ignore_index=True
        )
        p = [sign_flip_pvalue(d, alternative) if len(d) >= 2 else math.nan for d in rows["_d"]]
        rows["family"], rows["alternative"], rows["p_raw"] = family, alternative, np.asarray(p, dtype=np.float64)
        rows["p_holm"] = holm(rows["p_raw"].to_numpy(np.float64))
        parts.append(rows)
    if in_sample is not None:
        rows = pd.concat(
            [paired_rows(in_sample, tuned, baselines, m, IN_SAMPLE, level) for m in [OBJECTIVE, *COMPARED]],
            ignore_index=True,
        )
        rows["family"], rows["alternative"], rows["p_raw"], rows["p_holm"] = "", "", math.nan, math.nan
        parts.append(rows)
    table = pd.concat(parts, ignore_index=True).drop(columns="_d")
    return table[CONFIRMATION_SCHEMA.names].astype({"n_seeds": np.int64})


# --- the whole step ---------------------------------------------------------------------------------------------------
def _sweep(out: str) -> tuple[ExperimentConfig, ExperimentConfig, pd.Series]:
    """The sweep's config, its best_config.yaml and its best trial's row."""
    from lhas_ray.tuning.sweep import load_sweep

    store = ResultStore(out)
    cfg, _, _ = load_sweep(out)
    if not store.exists("best_config.yaml") or not store.exists("trials.parquet"):
        raise ValueError(f"{store.uri}: the sweep has no best_config.yaml yet (no trial completed); nothing to confirm")
    best = config_from_dict(yaml.safe_load(store.read_bytes("best_config.yaml")), source=store.path("best_config.yaml"))
    trials = store.read_parquet("trials.parquet").to_pandas()
    found = re.match(r"# Best trial (\S+) of ", store.read_bytes("best_config.yaml").decode())  # tuning.py writes it
    name = found.group(1) if found else None
    match = trials[trials["trial"] == name]
    if match.empty:
        raise ValueError(f"{store.uri}: best_config.yaml names trial {name!r}, which trials.parquet does not hold")
    return cfg, best, match.iloc[0]


def plan_confirmation(cfg: ExperimentConfig, best: ExperimentConfig, scores: pd.DataFrame, seeds: list[int]):
    """The baselines (key -> role) and the held-out config, from the baseline runs' scores on the development seeds."""
    from lhas_ray.tuning.configs import tuned_selector

    myopic = best_myopic(scores)
    roles: dict[str, str] = {}
    if "random" in {s.key for s in cfg.selectors}:
        roles["random"] = "random"
    if myopic is None:
        log.warning("the config's only baseline is random: no best myopic selector to confirm against")
    else:
        roles.setdefault(myopic, "best myopic")
    for key in cfg.tune.confirm_baselines:
        roles.setdefault(key, "named in tune.confirm_baselines")
    ccfg = confirm_config(best, tuned_selector(cfg).key, list(roles), seeds)
    check_unseen(cfg, ccfg)
    return roles, ccfg


def confirm(
    out: str,
    *,
    address: str | None = None,
    seeds: list[int] | None = None,
    runner: Runner | None = None,
    verbose: bool = False,
) -> Confirmation:
    """Run (or resume) the held-out confirmation of the sweep in ``out``; see the module docstring for the steps.

    ``seeds`` replaces the sweep's ``tune.heldout_seeds`` (for a sweep started without them). ``runner`` stands in
    for ``run_experiment`` in tests.
    """
    from lhas_ray.tuning.configs import tuned_selector
    from lhas_ray.tuning.trials import child_uri

    out = child_uri(out)
    cfg, best, best_row = _sweep(out)
    held = list(seeds) if seeds else list(cfg.tune.heldout_seeds)
    if not held:
        raise ConfigError(
            f"{out}: the sweep names no held-out seeds (tune.heldout_seeds is empty); pass --seeds S1 S2 ... "
            "(seeds the sweep never used)"
        )
    raw = cfg.model_dump(mode="json")  # the held-out seeds and baselines checked before any run (minutes)
    raw["tune"]["heldout_seeds"] = held
    config_from_dict(raw, source=f"{out}/sweep.yaml with tune.heldout_seeds = {held}")
    if runner is None:
        from lhas_ray.launch import run_experiment

        runner = functools.partial(run_experiment, verbose=verbose)
    log.info("confirmation 1/2: the baselines on the development seeds %s", cfg.seeds)
    dev_scores = run_baselines(cfg, out, address, runner)
    roles, ccfg = plan_confirmation(cfg, best, dev_scores, held)
    store = ResultStore(out)
    header = (
        f"# Held-out confirmation of the sweep in {out}: best_config.yaml's {TUNED} beside {', '.join(roles)}, on "
        f"seeds the sweep never saw, each with its own data draw.\n# Rerun it with: lhas-ray run {CONFIRM_CONFIG} "
        "--output OUT\n"
    )
    store.write_bytes(CONFIRM_CONFIG, (header + dump_config(ccfg)).encode())
    confirm_out = child_uri(out, CONFIRM_DIR)
    log.info("confirmation 2/2: %s and %s on the held-out seeds %s, into %s", TUNED, list(roles), held, confirm_out)
    runner(ccfg, confirm_out, address)
    heldout = seed_scores(ResultStore(confirm_out), ccfg)
    trial_scores = seed_scores(ResultStore(child_uri(out, str(best_row["run"]))), cfg)
    tuned_dev = trial_scores.rename(index={tuned_selector(cfg).key: TUNED}, level="selector")
    in_sample = pd.concat([tuned_dev, dev_scores]).sort_index()
    table = confirmation_table(heldout, TUNED, roles, in_sample=in_sample)
    store.write_parquet(CONFIRMATION, pa.Table.from_pandas(table, schema=CONFIRMATION_SCHEMA, preserve_index=False))
    return Confirmation(out, ccfg, roles, table)


# --- what it says -----------------------------------------------------------------------------------------------------
def _interval(row) -> str:
    return f"{row.diff:+.4f} [{row.lo:+.4f}, {row.hi:+.4f}]"


def confirmation_lines(table: pd.DataFrame, objective: str, alpha: float = 0.05) -> list[str]:
    """The confirmation's verdict, one sentence per held-out headline claim plus the immediate-score reading."""
    held = table[table["sample"] == HELDOUT]
    n = int(held["n_seeds"].max()) if len(held) else 0
    lines = [
        f"Held-out: {n} seeds the sweep never saw, each with a fresh data draw; tuned LHAS minus each baseline. The "
        f"best myopic selector is the baseline with the highest {IMMEDIATE} in the sweep's own baseline runs on the "
        "development seeds, random aside."
    ]
    m = int((held["family"] == "headline").sum())
    if m and m * min_attainable_p(n, "greater") >= alpha:
        need = next(k for k in range(n, 64) if m * min_attainable_p(k, "greater") < alpha)
        lines.append(
            f"With {n} seeds and {m} headline claims no claim can reach alpha = {alpha:g} (the smallest Holm-adjusted "
            f"one-sided p is {m} / 2^{n}); {need} seeds could."
        )
    k = int((held["family"] == "metrics").sum())
    if k and k * min_attainable_p(n, "two-sided") >= alpha:
        lines.append(
            f"Metrics family: {k} two-sided claims with {n} seeds; the smallest Holm-adjusted p is {k} x 2 / 2^{n} = "
            f"{k * min_attainable_p(n, 'two-sided'):.3g} >= alpha, so no metric difference can be called significant "
            "here; its intervals describe, they do not test."
        )
    for row in held[held["family"] == "headline"].itertuples():
        verdict = (
            f"better on the objective ({objective}), Holm-adjusted one-sided p = {row.p_holm:.3g} < {alpha:g}"
            if row.p_holm < alpha
            else f"not shown better on the objective ({objective}): Holm-adjusted one-sided p = {row.p_holm:.3g}"
        )
        lines.append(f"Against {row.baseline} ({row.role}): {verdict}; difference {_interval(row)}.")
    for row in held[(held["family"] == "metrics") & (held["metric"] == IMMEDIATE)].itertuples():
        inside = row.lo <= 0 <= row.hi
        lines.append(
            f"Immediate score against {row.baseline}: {_interval(row)}; "
            + (
                "the interval contains 0 (no difference detected; this is not a proof of equivalence)."
                if inside
                else f"the interval excludes 0 ({'better' if row.diff > 0 else 'worse'} now; Holm p = {row.p_holm:.3g})."
            )
        )
    lines.append(
        "In-sample rows (the development seeds the weights were chosen on) are shown beside, untested: they are "
        "optimistic by construction."
    )
    return lines


def confirmation_summary(result: Confirmation) -> str:
    """The closing text of ``lhas-ray confirm``: the verdict lines and the held-out table."""
    t = result.table
    held = t[t["sample"] == HELDOUT][["family", "baseline", "metric", "tuned", "base", "diff", "lo", "hi", "p_holm"]]
    body = held.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return "\n".join([*confirmation_lines(t, result.config.tune.objective, result.alpha), "", body])
