"""The rank analysis as one long table, ``OUT/ranking.parquet`` (schema: ``lhas_ray.schemas.RANKING``)."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from lhas_ray import schemas
from lhas_ray.evaluation.baselines import myopia_verdict
from lhas_ray.evaluation.cube import TEST_NAME
from lhas_ray.evaluation.ranking import Ranking
from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)
RANKING_SCHEMA = schemas.RANKING


def _row(
    kind, metric=None, stage=None, selector=None, baseline=None, statistic="", value=None, lo=None, hi=None, note=None
) -> dict:
    """One row of the long table; NaN bounds become nulls."""
    return {
        "kind": kind,
        "metric": metric,
        "stage": None if stage is None else int(stage),
        "selector": selector,
        "baseline": baseline,
        "statistic": statistic,
        "value": None if value is None else float(value),
        "lo": None if lo is None or np.isnan(lo) else float(lo),
        "hi": None if hi is None or np.isnan(hi) else float(hi),
        "note": note,
    }


def _rank_rows(ranking: Ranking) -> list[dict]:
    rows = []
    for r in ranking.ranks.itertuples(index=False):
        key = dict(metric=r.metric, stage=r.stage, selector=r.selector)
        rows.append(_row("rank", **key, statistic="mean", value=r.mean, lo=r.lo, hi=r.hi, note="t-interval"))
        rows += [_row("rank", **key, statistic=stat, value=getattr(r, stat)) for stat in ("std", "n_seeds", "rank")]
    return rows


def _tau_rows(ranking: Ranking) -> list[dict]:
    rows = []
    for r in ranking.tau.itertuples(index=False):
        key = dict(metric=r.metric, stage=r.stage)
        rows += [
            _row("tau", **key, statistic="tau_b_of_means", value=r.tau_b, note="descriptive"),
            _row("tau", **key, statistic="discordant_share", value=r.discordant, note="descriptive"),
            _row("tau", **key, statistic="n_selectors", value=r.n_selectors),
            _row("tau", **key, statistic="mean_seed_tau_b", value=r.seed_tau, lo=r.seed_tau_lo, hi=r.seed_tau_hi),
            _row("tau", **key, statistic="p_value_raw", value=r.p_raw, note=TEST_NAME + ", two-sided"),
            _row("tau", **key, statistic="p_value_holm", value=r.p_holm, note="family reversal"),
        ]
    return rows


def _difference_rows(ranking: Ranking) -> list[dict]:
    rows = []
    for r in ranking.differences.itertuples(index=False):
        key = dict(metric=r.metric, stage=r.stage, selector=r.selector, baseline=r.baseline)
        note = "oriented: + = better; t-interval"
        rows += [
            _row("difference", **key, statistic="mean_diff", value=r.diff, lo=r.lo, hi=r.hi, note=note),
            _row("difference", **key, statistic="n_seeds", value=r.n_seeds),
            _row("difference", **key, statistic="p_value_raw", value=r.p_raw, note=TEST_NAME + ", two-sided"),
            _row("difference", **key, statistic="p_value_holm", value=r.p_holm, note="family difference"),
        ]
    return rows


def _myopia_rows(ranking: Ranking) -> list[dict]:
    rows = []
    for r in ranking.myopia.itertuples(index=False):
        key = dict(metric=r.metric, stage=r.stage, selector=r.selector, baseline=r.baseline)
        now = dict(value=r.now_diff, lo=r.now_lo, hi=r.now_hi, note="immediate@1, t-interval")
        rows += [
            _row("myopia", **key, statistic="now_diff", **now),
            _row(
                "myopia",
                **key,
                statistic="later_diff",
                value=r.later_diff,
                lo=r.later_lo,
                hi=r.later_hi,
                note="t-interval",
            ),
            _row("myopia", **key, statistic="p_value_now", value=r.p_now, note=TEST_NAME + ", one-sided (better now)"),
            _row(
                "myopia",
                **key,
                statistic="p_value_later",
                value=r.p_later,
                note=TEST_NAME + ", one-sided (worse later)",
            ),
            _row("myopia", **key, statistic="p_value_raw", value=r.p_raw, note="intersection-union: max of the two"),
            _row("myopia", **key, statistic="p_value_holm", value=r.p_holm, note="family myopia"),
            _row("myopia", **key, statistic="myopic", value=float(r.myopic), note=myopia_verdict(r, ranking.alpha)),
        ]
    return rows


def ranking_table(ranking: Ranking) -> pa.Table:
    """The rank analysis as one long table (kind, metric, stage, selector, baseline, statistic, value, lo, hi, note)."""
    rows = _rank_rows(ranking) + _tau_rows(ranking) + _difference_rows(ranking) + _myopia_rows(ranking)
    rows += [
        _row("family", metric=fam, statistic="size", value=m, note=f"Holm-Bonferroni at alpha {ranking.alpha:g}")
        for fam, m in ranking.families.items()
    ]
    rows += [_row("note", statistic="note", note=note) for note in ranking.notes]
    if not rows:
        return RANKING_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=RANKING_SCHEMA)


def write_ranking(store: ResultStore, ranking: Ranking) -> str:
    """Write the rank analysis to OUT/ranking.parquet; returns its path."""
    path = store.write_parquet("ranking.parquet", ranking_table(ranking))
    logger.info("wrote %s", path)
    return path
