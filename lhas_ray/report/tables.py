"""The report's tables as DataFrames (ranks, rank agreement, myopia, differences, objective terms, final metrics, the
held-out confirmation), and their Markdown and HTML forms.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from lhas_ray.evaluation.ranking import (
    NOW,
    PRIMARY_LATER,
    Ranking,
    myopia_verdict,
)
from lhas_ray.report.verdict import fmt_ci, fmt_p
from lhas_ray.tuning.confirm import HELDOUT, IN_SAMPLE

logger = logging.getLogger("lhas_ray.report")


def tau_table(ranking: Ranking) -> pd.DataFrame:
    t = ranking.tau
    out = pd.DataFrame(
        {
            "long-horizon metric": [f"{m}@{s}" for m, s in zip(t["metric"], t["stage"], strict=True)],
            "selectors": t["n_selectors"].astype(int).astype(str),
            # NaN: no ranking to compare (every selector tied, e.g. none reached a threshold within the probe)
            "tau-b of mean rankings": t["tau_b"].map(lambda v: "n/a (all tied)" if np.isnan(v) else f"{v:+.3f}"),
            "discordant pairs": [
                "n/a" if np.isnan(tau) else f"{d:.0%}" for tau, d in zip(t["tau_b"], t["discordant"], strict=True)
            ],
        }
    )
    if not ranking.descriptive:
        out[f"mean per-seed tau-b [{ranking.level:.0%} t-interval]"] = [
            fmt_ci(*v, True) for v in zip(t["seed_tau"], t["seed_tau_lo"], t["seed_tau_hi"], strict=True)
        ]
        out["p (sign-flip, two-sided)"] = t["p_raw"].map(fmt_p)
        out["p (Holm, family reversal)"] = t["p_holm"].map(fmt_p)
    return out


def myopia_tables(ranking: Ranking) -> tuple[pd.DataFrame, pd.DataFrame]:
    my = ranking.myopia
    if my.empty:
        return pd.DataFrame(), pd.DataFrame()
    p = my[my["metric"] == PRIMARY_LATER]
    primary = pd.DataFrame(
        {
            "baseline": p["baseline"],
            "selector": p["selector"],
            f"now: immediate@{NOW[1]} minus baseline": [
                fmt_ci(*v, True) for v in zip(p["now_diff"], p["now_lo"], p["now_hi"], strict=True)
            ],
            f"later: {PRIMARY_LATER}@{ranking.final_stage.get(PRIMARY_LATER)} minus baseline": [
                fmt_ci(*v, True) for v in zip(p["later_diff"], p["later_lo"], p["later_hi"], strict=True)
            ],
        }
    )
    if not ranking.descriptive:
        primary["p now (one-sided)"] = p["p_now"].map(fmt_p)
        primary["p later (one-sided)"] = p["p_later"].map(fmt_p)
        primary["p (Holm, family myopia)"] = p["p_holm"].map(fmt_p)
    primary["verdict"] = [myopia_verdict(r, ranking.alpha) for r in p.itertuples()]
    cell = np.where(my["myopic"], "myopic", np.where(my["point_myopic"], "point only", ""))
    grid = (
        my.assign(
            cell=cell, col=my["metric"] + "@" + my["stage"].astype(str), row=my["baseline"] + ": " + my["selector"]
        )
        .pivot(index="row", columns="col", values="cell")
        .rename_axis(index="baseline: selector", columns=None)
        .reset_index()
    )
    return primary.reset_index(drop=True), grid


def differences_table(ranking: Ranking) -> pd.DataFrame:
    """Every selector minus each baseline per metric at its final stage, with raw and Holm-adjusted p-values."""
    d = ranking.differences
    if d.empty or ranking.descriptive:
        return pd.DataFrame()
    cell = [
        f"{fmt_ci(v, lo, hi, True)} p={fmt_p(pr)}/{fmt_p(ph)}" + ("*" if ph < ranking.alpha else "")
        for v, lo, hi, pr, ph in zip(d["diff"], d["lo"], d["hi"], d["p_raw"], d["p_holm"], strict=True)
    ]
    return (
        d.assign(cell=cell, col=d["metric"] + "@" + d["stage"].astype(str), row=d["baseline"] + ": " + d["selector"])
        .pivot(index="row", columns="col", values="cell")
        .rename_axis(index="baseline: selector", columns=None)
        .reset_index()
    )


def terms_table(terms: pd.DataFrame) -> pd.DataFrame:
    """Each objective term's contribution to J of the selection, per selector and stage: mean over seeds (weight, unit)."""
    g = terms.groupby(["selector", "stage", "term"], sort=True)
    t = g.agg(
        contribution=("contribution", "mean"), weight=("weight", "first"), unit=("unit", "mean"), n=("seed", "nunique")
    )
    t = t.reset_index()
    t["cell"] = [
        f"{c:+.2f} (w {w:g}, unit {u:.3g})" for c, w, u in zip(t["contribution"], t["weight"], t["unit"], strict=True)
    ]
    out = t.pivot(index=["selector", "stage"], columns="term", values="cell").rename_axis(columns=None).reset_index()
    total = terms.groupby(["selector", "stage", "seed"])["contribution"].sum().groupby(["selector", "stage"]).mean()
    out["J (sum)"] = [f"{total.loc[(s, st)]:+.2f}" for s, st in zip(out["selector"], out["stage"], strict=True)]
    return out


def _mean_std_rank(row: pd.Series) -> str:
    """'mean ± std (#rank)'; an undefined std (one seed) is left out."""
    spread = f" ± {row['std']:.3f}" if np.isfinite(row["std"]) else ""
    return f"{row['mean']:.3f}{spread} (#{row['rank']:g})"


def final_table(ranking: Ranking) -> pd.DataFrame:
    r = ranking.ranks
    cols = {}
    for m, t in ranking.final_stage.items():
        s = r[(r["metric"] == m) & (r["stage"] == t)].set_index("selector")
        cols[f"{m}@{t}"] = [_mean_std_rank(s.loc[sel]) if sel in s.index else "" for sel in ranking.selectors]
    return pd.DataFrame({"selector": ranking.selectors, **cols})


def confirmation_tables(table: pd.DataFrame, alpha: float) -> list[tuple[str, pd.DataFrame]]:
    """The held-out tests (two Holm families) and the in-sample comparison beside them, one row per baseline."""
    out = []
    for sample, caption in (
        (
            HELDOUT,
            "Held-out: tuned LHAS minus each baseline, paired by seed: mean [t-interval] p=raw/Holm "
            "(headline: one-sided, tuned better; metrics: two-sided; * = adjusted p < alpha)",
        ),
        (
            IN_SAMPLE,
            "In-sample: the best trial minus each baseline on the development seeds (not tested: the weights "
            "were chosen on these seeds)",
        ),
    ):
        t = table[table["sample"] == sample]
        if t.empty:
            continue
        cell = [
            ""
            if not np.isfinite(d)
            else fmt_ci(d, lo, hi, True)
            + ("" if not np.isfinite(pr) else f" p={fmt_p(pr)}/{fmt_p(ph)}" + ("*" if ph < alpha else ""))
            for d, lo, hi, pr, ph in zip(t["diff"], t["lo"], t["hi"], t["p_raw"], t["p_holm"], strict=True)
        ]
        wide = (
            t.assign(cell=cell, row=t["baseline"] + " (" + t["role"] + ")")
            .pivot(index="row", columns="metric", values="cell")
            .reindex(columns=list(dict.fromkeys(t["metric"])))
            .rename_axis(index="baseline", columns=None)
            .reset_index()
        )
        wide.insert(
            1,
            "seeds",
            [int(t.loc[t["baseline"] + " (" + t["role"] + ")" == r, "n_seeds"].max()) for r in wide["baseline"]],
        )
        out.append((f"{caption} [{sample}]", wide))
    return out


def md_table(df: pd.DataFrame) -> str:
    """A pipe table for Markdown."""
    if df.empty:
        return "_(none)_"
    cells = [[str(c) for c in df.columns]] + [[str(v).replace("|", "\\|") for v in row] for row in df.to_numpy()]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join(" --- " for _ in df.columns) + "|")
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return "<div class='scroll'>" + df.to_html(index=False, escape=True, border=0, classes="tbl", na_rep="") + "</div>"
