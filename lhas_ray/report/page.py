"""The report of a run: plots, a self-contained HTML page (PNG images embedded), a Markdown twin and TensorBoard scalars.

``write_report(OUT)`` reads the committed tables, refuses a folder that is not a complete run (naming what is
missing, writing nothing), computes the trajectory metrics and the rank analysis, renders every figure in memory and
only then writes ``OUT/trajectory.parquet``, ``OUT/ranking.parquet``, ``OUT/report/*.png``, ``OUT/report.md`` and,
last, ``OUT/report.html``. The verdict is computed from the numbers with fixed rules stated beside it.
"""

from __future__ import annotations

import base64
import html
import logging

import pandas as pd

from lhas_ray.evaluation.composition import composition, composition_table, jaccard
from lhas_ray.evaluation.definitions import definitions
from lhas_ray.evaluation.metrics import (
    mean_accuracy_matrices,
    trajectory_metrics,
    trajectory_table,
    untargeted_skills,
)
from lhas_ray.evaluation.ranking import (
    TEST_NAME,
    Ranking,
    rank_analysis,
)
from lhas_ray.evaluation.ranking_table import ranking_table
from lhas_ray.report.colors import colors_for
from lhas_ray.report.figures import (
    Figure_,
    fig_bump,
    fig_composition,
    fig_heatmaps,
    fig_metrics,
    fig_overlap,
    fig_pareto,
    fig_timings,
    fig_trials,
)
from lhas_ray.report.load import SAMPLE_TEXT, RunInputs, load_run
from lhas_ray.report.tables import (
    confirmation_tables,
    differences_table,
    final_table,
    html_table,
    md_table,
    myopia_tables,
    tau_table,
    terms_table,
)
from lhas_ray.report.tensorboard import write_tensorboard
from lhas_ray.report.verdict import verdict
from lhas_ray.store import ResultStore
from lhas_ray.tuning.confirm import confirmation_lines

logger = logging.getLogger("lhas_ray.report")


# Section ids of report.html, in page order; "tuning" appears only when OUT/trials.parquet exists, "objective-terms"
# only when a selector recorded its objective's terms (lhas), "composition" only when the run stored selections.
SECTIONS = (
    "run",
    "verdict",
    "accuracy-matrix",
    "metrics-over-stages",
    "ranks",
    "pareto",
    "rank-reversal",
    "myopia",
    "final-metrics",
    "composition",
    "objective-terms",
    "timings",
    "tuning",
    "confirmation",
    "definitions",
)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
table.tbl{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:.25em .5em;text-align:left}
table.tbl th{background:#f5f5f5}table.tbl td{white-space:nowrap}div.scroll{overflow-x:auto;max-width:100%}ul.verdict li{margin:.4em 0}dl dt{font-weight:600}dl dd{margin:0 0 .5em 1.5em}
code{background:#f3f3f3;padding:0 .2em}
"""


def header_facts(run: RunInputs, ranking: Ranking, T: int) -> list[tuple[str, str]]:
    facts = [
        ("run folder", run.out),
        (f"selectors ({len(ranking.selectors)})", ", ".join(ranking.selectors)),
        (f"seeds ({len(ranking.seeds)})", ", ".join(map(str, ranking.seeds))),
        ("stages", f"{T} (1..{T}; stage 0 is the base model)"),
        (
            "probe metrics",
            f"lca_beta = {run.lca_beta if run.lca_beta is not None else 'all steps'}, threshold = {run.threshold:g}",
        ),
        (
            "evidence",
            "1 seed: descriptive only (no intervals, no tests)"
            if ranking.descriptive
            else f"{TEST_NAME}; {ranking.level:.0%} t-intervals; Holm-Bonferroni per family at alpha {ranking.alpha:g}",
        ),
        (
            "data draws",
            "per seed (data.resample: per_seed)"
            if run.settings.resample == "per_seed"
            else f"one fixed draw for every seed (data.seed = {run.settings.data_seed})",
        ),
        (
            "myopia tested against",
            ", ".join(ranking.baselines)
            or f"nothing: no baseline ({', '.join(run.settings.baselines)}) in this report",
        ),
        ("forgetting", run.settings.forgetting),
    ]
    if run.sample:
        facts.insert(1, ("sample", SAMPLE_TEXT[run.sample]))
    if run.pool_leaks is not None and len(run.pool_leaks):
        n = int(run.pool_leaks["rows_removed"].sum())
        facts.append(
            (
                "pool rows removed (text shared with a held-out set)",
                f"{n} in all" + (f", max {int(run.pool_leaks['rows_removed'].max())} in one stage's pool" if n else ""),
            )
        )
    untargeted = untargeted_skills(run.metrics)
    if untargeted:
        facts.append(("never-targeted skills (general set)", ", ".join(untargeted)))
    if run.curves is None or not (run.curves["split"] == "probe").any():
        facts.append(("probe curves", "none recorded: lca and steps_to_threshold are absent"))
    return facts


TITLES = {
    "run": "Run",
    "verdict": "Verdict",
    "accuracy-matrix": "Accuracy matrix",
    "metrics-over-stages": "Metrics over stages",
    "ranks": "Ranks",
    "pareto": "Immediate versus long-horizon",
    "rank-reversal": "Rank reversal",
    "myopia": "Myopia",
    "final-metrics": "Final metrics",
    "composition": "What each selector picked",
    "timings": "Timings",
    "tuning": "Tuning",
    "confirmation": "Held-out confirmation",
    "objective-terms": "Objective terms",
    "definitions": "Definitions",
}


def section_tables(run: RunInputs, ranking: Ranking) -> dict[str, list[tuple[str, pd.DataFrame]]]:
    """Each section's (caption, table) pairs; a sweep's protocol labels every caption with its sample."""
    primary, grid = myopia_tables(ranking)
    tables = {
        "rank-reversal": [("Immediate ranking versus each long-horizon ranking", tau_table(ranking))],
        "myopia": [],
        "final-metrics": [("Each metric at its final stage: mean ± std over seeds (#rank)", final_table(ranking))],
        "composition": []
        if run.selections is None
        else [
            (
                "Share of each stage's selection (s<t> <kind>), % of the budget, mean over seeds",
                composition_table(composition(run.selections)),
            )
        ],
        "objective-terms": []
        if run.terms is None or run.terms.empty
        else [("Contribution of each term to J of the selected set, mean over seeds", terms_table(run.terms))],
    }
    if ranking.baselines:
        tables["myopia"] = [
            ("Against each baseline, paired by seed (positive = better than the baseline)", primary),
            (
                "Myopia on every long-horizon metric (myopic: Holm-adjusted p < alpha; point only: not tested or not "
                "significant)",
                grid,
            ),
        ]
        diff = differences_table(ranking)
        if not diff.empty:
            tables["myopia"].append(
                (
                    "Every metric at its final stage minus the baseline: mean [t-interval] p=raw/Holm "
                    "(family difference, two-sided; * = adjusted p < alpha)",
                    diff,
                )
            )
    if run.confirmation is not None:
        tables["confirmation"] = confirmation_tables(run.confirmation, run.settings.alpha)
    if run.sample:  # every table of a sweep's protocol says which sample its numbers come from
        for sec, items in tables.items():
            if sec != "confirmation":
                tables[sec] = [(f"{caption} [{run.sample}]", df) for caption, df in items]
    return tables


def section_texts(run: RunInputs, ranking: Ranking, by_section: dict[str, list[Figure_]]) -> dict[str, str]:
    """Each section's paragraph, stated from the numbers and the settings."""
    texts = {
        "ranks": "",
        "rank-reversal": "Kendall tau-b between the ranking by immediate accuracy after stage 1 and each long-horizon "
        "ranking (+1: same order, -1: reversed); discordant pairs: share of selector pairs ordered oppositely. "
        + (
            "One seed: descriptive only."
            if ranking.descriptive
            else "Within each seed, tau-b is computed on that seed's values; their mean is tested against 0 with the "
            "exact sign-flip test (Holm over the metrics)."
        ),
        "myopia": (
            "A selector is myopic against a baseline when it is better on immediate accuracy after stage 1 and worse "
            "on a long-horizon metric at the final stage. "
            + (
                "With one seed only the point differences are shown; they are not tests."
                if ranking.descriptive
                else "Each claim is an intersection-union test: its p-value is the larger of the two one-sided exact "
                "sign-flip p-values (better now, worse later), Holm-adjusted over every claim of the family."
            )
            if ranking.baselines
            else "No baseline selector was run, so the myopia test was not done."
        ),
        "timings": "" if run.timings is not None else "No timings were recorded.",
        "tuning": "In-sample: every trial ran on the development seeds; the best trial's numbers are optimistic."
        + (
            " The held-out confirmation below reruns it on seeds the sweep never saw."
            if run.confirmation is not None
            else ""
        ),
        "confirmation": " ".join(confirmation_lines(run.confirmation, run.objective, run.settings.alpha))
        if run.confirmation is not None
        else "",
        "objective-terms": "Each term is in its own unit, the spread of its marginal gains over the pool at the start "
        "of greedy, times its weight; concentration counts negative. The four sum to J, the objective the greedy "
        "maximised.",
    }
    if run.trials is not None and not by_section.get("tuning"):
        texts["tuning"] = f"trials.parquet has no objective column I recognise (columns: {list(run.trials.columns)})."
    return texts


def render(
    run: RunInputs, trajectory: pd.DataFrame, ranking: Ranking, figures: list[Figure_], T: int
) -> tuple[str, str]:
    """The HTML page and its Markdown twin."""
    facts = header_facts(run, ranking, T)
    lines = verdict(ranking, run.settings)
    defs = definitions(run.settings.forgetting)
    by_section: dict[str, list[Figure_]] = {}
    for f in figures:
        by_section.setdefault(f.section, []).append(f)
    tables = section_tables(run, ranking)
    texts = section_texts(run, ranking, by_section)
    titles = TITLES
    has_terms = run.terms is not None and not run.terms.empty
    shown = {
        "tuning": run.trials is not None,
        "objective-terms": has_terms,
        "confirmation": run.confirmation is not None,
        "composition": run.selections is not None,
    }
    sections = [s for s in SECTIONS if shown.get(s, True)]

    h = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lhas_ray report: {html.escape(run.out)}</title>"
    ]
    h.append(f"<style>{_CSS}</style></head><body><h1>Long-horizon data selection: report</h1>")
    md = ["# Long-horizon data selection: report", ""]
    for sec in sections:
        h.append(f"<section id='{sec}'><h2>{titles[sec]}</h2>")
        md += [f"## {titles[sec]}", ""]
        if sec == "run":
            h.append(
                "<table class='tbl'>"
                + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
                + "</table>"
            )
            md += [f"- **{k}**: {v}" for k, v in facts] + [""]
        elif sec == "verdict":
            h.append("<ul class='verdict'>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
            h.append(
                "<p><small>Rules: 'leads' = rank 1 by mean over seeds (a description, not a test); 'myopic' and "
                "'significant' only where a Holm-adjusted p-value is below alpha; nothing is tested with one "
                "seed.</small></p>"
            )
            md += [f"- {x}" for x in lines] + [""]
        elif sec == "definitions":
            h.append(
                "<dl>"
                + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in defs.items())
                + "</dl>"
            )
            md += [f"- **{k}**: {v}" for k, v in defs.items()] + [""]
        if texts.get(sec):
            h.append(f"<p>{html.escape(texts[sec])}</p>")
            md += [texts[sec], ""]
        for f in by_section.get(sec, []):
            b64 = base64.b64encode(f.png).decode("ascii")
            h.append(
                f"<figure><img alt='{html.escape(f.title)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)}</figcaption></figure>"
            )
            md += [f"![{f.title}](report/{f.name}.png)", "", f"*{f.title}.* {f.caption}", ""]
        for caption, df in tables.get(sec, []):
            h.append(f"<h3>{html.escape(caption)}</h3>{html_table(df)}")
            md += [f"### {caption}", "", md_table(df), ""]
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md)


def write_report(out: str, *, tensorboard: bool = True) -> str:
    """Write OUT/report.html (images embedded), OUT/report/*.png, OUT/report.md and the metric tables; returns the HTML path."""
    store = ResultStore(out)
    run = load_run(store)
    st = run.settings
    trajectory = trajectory_metrics(
        run.metrics,
        run.curves,
        lca_beta=run.lca_beta,
        threshold=run.threshold,
        censor_at=st.censor_at,
        forgetting=st.forgetting,
    )
    ranking = rank_analysis(trajectory, baselines=st.baselines, alpha=st.alpha, myopia_metrics=st.myopia_metrics)
    T = int(run.metrics["stage"].max())
    colors = colors_for(ranking.selectors, run.selector_names)
    figures = [
        fig_heatmaps(mean_accuracy_matrices(run.metrics), T),
        fig_metrics(trajectory, colors),
        fig_bump(ranking, colors),
        fig_pareto(ranking, colors),
        fig_timings(run.timings) if run.timings is not None else None,
        fig_trials(run.trials, run.importances) if run.trials is not None else None,
        *(
            [fig_composition(composition(run.selections), colors), fig_overlap(jaccard(run.selections))]
            if run.selections is not None
            else []
        ),
    ]
    figures = [f for f in figures if f is not None]
    page, md = render(run, trajectory, ranking, figures, T)

    # Everything is built; only now touch the folder (each file atomically, the HTML last).
    store.write_parquet("trajectory.parquet", trajectory_table(trajectory))
    store.write_parquet("ranking.parquet", ranking_table(ranking))
    for f in figures:
        store.write_bytes(f"report/{f.name}.png", f.png)
    store.write_bytes("report.md", md.encode())
    path = store.write_bytes("report.html", page.encode())
    if tensorboard:
        write_tensorboard(store, trajectory)
    logger.info("wrote %s", path)
    return path
