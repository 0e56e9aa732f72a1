"""The verdict: sentences computed from the rank analysis with fixed rules (one seed is descriptive; a claim only
where a Holm-adjusted p-value is below alpha).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from lhas_ray.evaluation.ranking import (
    MIN_SEEDS_TAU_INTERVAL,
    NOW,
    PRIMARY_LATER,
    TEST_NAME,
    Ranking,
)
from lhas_ray.evaluation.stats import min_attainable_p
from lhas_ray.report.load import Settings

logger = logging.getLogger("lhas_ray.report")


def fmt_ci(v: float, lo: float, hi: float, signed: bool = False) -> str:
    """'v [lo, hi]', or just 'v' where no interval was computed."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f.format(v)
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.3g}"


def _leaders(ranks: pd.DataFrame, metric: str, stage: int) -> pd.DataFrame:
    return ranks[(ranks["metric"] == metric) & (ranks["stage"] == stage)].sort_values(["rank", "selector"])


def _who_leads(ranking: Ranking, metric: str, stage: int, what: str) -> tuple[list[str], str]:
    """'X leads with m [t-interval]; runner-up ...': a description of the means, not a test."""
    board = _leaders(ranking.ranks, metric, stage)
    top = board[board["rank"] == board["rank"].min()]
    names, first = top["selector"].tolist(), top.iloc[0]
    runner = board[board["rank"] > first["rank"]].head(1)
    tail = f"; runner-up {runner.iloc[0]['selector']} with {runner.iloc[0]['mean']:.3f}" if len(runner) else ""
    lead = " and ".join(names) + (" tie" if len(names) > 1 else " leads")
    ci = "" if ranking.descriptive else f" ({ranking.level:.0%} t-interval of the mean over seeds)"
    return names, f"{what}: {lead} with {fmt_ci(first['mean'], first['lo'], first['hi'])}{ci}{tail}."


def _agreement_line(ranking: Ranking, T: int, now_names: list[str], later_names: list[str]) -> str:
    """The rank-agreement sentence for the primary metric: descriptive with one seed, tested with more."""
    r = ranking.tau.set_index("metric").loc[PRIMARY_LATER]
    leader = (
        "The same selector leads now and later."
        if set(now_names) == set(later_names)
        else f"The leader changes from {' and '.join(now_names)} (now) to {' and '.join(later_names)} (later)."
    )
    head = (
        f"Rank agreement from immediate accuracy at stage {NOW[1]} to average accuracy at stage {T}: Kendall tau-b "
        f"{r['tau_b']:+.3f} between the rankings by mean, {r['discordant']:.0%} of selector pairs discordant."
    )
    if ranking.descriptive:
        return f"{head} With one seed this describes this run only; no test. {leader}"
    interval = (
        f" [{r['seed_tau_lo']:+.3f}, {r['seed_tau_hi']:+.3f}]"
        if np.isfinite(r["seed_tau_lo"])
        else f" (no interval: fewer than {MIN_SEEDS_TAU_INTERVAL} seeds)"
    )
    adj = r["p_holm"]
    if np.isfinite(adj) and adj < ranking.alpha:
        finding = "the rankings are reversed" if r["seed_tau"] < 0 else "the rankings agree"
        finding = f"Significantly, {finding} (Holm-adjusted p = {fmt_p(adj)} < {ranking.alpha:g})."
    else:
        finding = (
            f"Neither agreement nor reversal is significant (Holm-adjusted p = {fmt_p(adj)} over the "
            f"{ranking.families.get('reversal', 0)} rank-agreement tests)."
        )
    return (
        f"{head} Within seeds, mean tau-b {r['seed_tau']:+.3f}{interval} over {int(r['n_seeds'])} seeds. "
        f"{finding} {leader}"
    )


def _myopia_lines(ranking: Ranking) -> list[str]:
    """Myopia against each baseline: significant claims after Holm, and point estimates said as such."""
    lines = []
    my = ranking.myopia
    for base in ranking.baselines:
        mine = my[my["baseline"] == base]
        primary = mine[mine["metric"] == PRIMARY_LATER]
        point = primary[primary["point_myopic"]]
        desc = "; ".join(
            f"{r.selector} (now {fmt_ci(r.now_diff, r.now_lo, r.now_hi, True)}, later "
            f"{fmt_ci(r.later_diff, r.later_lo, r.later_hi, True)}"
            + ("" if ranking.descriptive else f", adjusted p {fmt_p(r.p_holm)}")
            + ")"
            for r in point.itertuples()
        )
        if ranking.descriptive:
            lines.append(
                f"Better than {base} at stage {NOW[1]} and worse on {PRIMARY_LATER} at the last stage, in this one "
                f"seed: {desc or 'none'}. One seed cannot tell such differences from noise: this is not a finding."
            )
            continue
        sig = mine[mine["myopic"]]
        if len(sig):
            per = sig.groupby("selector")["metric"].apply(lambda s: ", ".join(s))
            lines.append(
                f"Myopic against {base} (better now, worse later; Holm-adjusted p < {ranking.alpha:g}): "
                + "; ".join(f"{s} on {m}" for s, m in per.items())
                + "."
            )
        else:
            lines.append(
                f"No selector is shown myopic against {base} at alpha {ranking.alpha:g} after Holm over the "
                f"{ranking.families.get('myopia', 0)} myopia claims."
            )
        if desc:
            lines.append(
                f"Better than {base} now and worse on {PRIMARY_LATER} later by point estimate (mean difference over "
                f"seeds, {ranking.level:.0%} t-interval): {desc}."
            )
    return lines


def _evidence_line(ranking: Ranking, settings: Settings) -> str:
    """What the verdict rests on: seeds, the data draw, the test, the families, and what they can show."""
    n = len(ranking.seeds)
    data = (
        "each seed drew its own pools, eval, probe, OOD, warm-up and proxy sets (data.resample: per_seed)"
        if settings.resample == "per_seed"
        else f"every seed used one fixed draw of the data (data.seed = {settings.data_seed}), so any interval is "
        "conditional on that draw"
    )
    if ranking.descriptive:
        draw = "its own draw of the data" if settings.resample == "per_seed" else f"data.seed = {settings.data_seed}"
        return (
            f"Evidence: 1 seed ({draw}). One seed is descriptive only: no interval, test or verdict is computed; "
            "list 5 or more seeds in the config's seeds for tests."
        )
    fams = ", ".join(f"{k} ({v} claims)" for k, v in ranking.families.items() if v)
    text = (
        f"Evidence: {n} seeds, {data}. Tests: {TEST_NAME} (all {2**n} sign patterns), paired by seed; intervals are "
        f"{ranking.level:.0%} Student-t intervals of the mean over seeds. Each claim belongs to a family controlled "
        f"with Holm-Bonferroni at alpha {ranking.alpha:g}: {fams}."
    )
    m = ranking.families.get("myopia", 0)
    if m and not ranking.attainable("myopia"):
        need = int(np.ceil(np.log2(m / ranking.alpha)))
        text += (
            f" With {n} seeds the smallest attainable one-sided p-value is {min_attainable_p(n):.3g}, above "
            f"alpha/m = {ranking.alpha / m:.2g} for the {m} myopia claims: no myopia claim can reach significance at "
            f"this number of seeds ({need} seeds could; or declare fewer metrics with evaluation.myopia_metrics)."
        )
    return text


def verdict(ranking: Ranking, settings: Settings | None = None) -> list[str]:
    """Plain-language findings computed from the rank analysis; each claim says what it rests on."""
    # Without settings the absent baselines are known only from the ranking's notes: keep those notes then.
    said = settings is not None  # the "Myopia: no 'x' selector was run" line below names them
    settings = settings or Settings(ranking.baselines, "since_trained", None, "fixed", None)
    notes = [
        f"Note: {n[0].upper()}{n[1:]}."
        for n in ranking.notes
        if not n.startswith("1 seed") and not (said and "selector in" in n)
    ]
    if len(ranking.selectors) < 2:
        notes = [n for n in notes if "one selector" not in n]
        return [f"Only one selector was run ({ranking.selectors[0]}): there is nothing to rank.", *notes]
    lines: list[str] = []
    if ranking.descriptive:
        lines.append("One seed: every number below describes this run only. Nothing here is a finding.")
    T = ranking.final_stage.get(PRIMARY_LATER, 1)
    now_names, text = _who_leads(ranking, *NOW, f"Now (immediate accuracy after stage {NOW[1]})")
    lines.append(text)
    if T <= 1:
        lines.append("Only one stage was run, so 'later' is 'now': this run contains no long-horizon evidence.")
    else:
        later_names, text = _who_leads(
            ranking, PRIMARY_LATER, T, f"Later (average accuracy over all {T} stages after stage {T})"
        )
        lines.append(text)
        others = []
        for m, label in (
            ("forgetting", "least forgetting"),
            ("lca", "fastest adaptation (LCA)"),
            ("untrained_retention", "best retention of never-targeted skills"),
            ("ood_acc", "best OOD accuracy"),
        ):
            if m in ranking.final_stage:
                board = _leaders(ranking.ranks, m, ranking.final_stage[m])
                others.append(f"{label}: {', '.join(board[board['rank'] == board['rank'].min()]['selector'])}")
        if others:
            lines.append("Other long-horizon leaders by mean at the final stage: " + "; ".join(others) + ".")
        if PRIMARY_LATER in set(ranking.tau["metric"]):
            lines.append(_agreement_line(ranking, T, now_names, later_names))
        if not ranking.descriptive:
            sig = ranking.tau[(ranking.tau["p_holm"] < ranking.alpha) & (ranking.tau["metric"] != PRIMARY_LATER)]
            if len(sig):
                lines.append(
                    "Other rank-agreement tests significant after Holm: "
                    + ", ".join(f"{r.metric} ({'reversed' if r.seed_tau < 0 else 'agree'})" for r in sig.itertuples())
                    + "."
                )
    missing = [b for b in settings.baselines if b not in ranking.selectors]
    if missing:
        lines.append(f"Myopia: no {', '.join(map(repr, missing))} selector was run, so nothing was tested against it.")
    if T > 1 and not ranking.myopia.empty:
        lines += _myopia_lines(ranking)
    lines.append(_evidence_line(ranking, settings))
    return lines + notes
