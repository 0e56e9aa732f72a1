"""The report of a run: plots, a self-contained HTML page (PNG images embedded), a Markdown twin and TensorBoard scalars.

``write_report(OUT)`` reads the committed tables, refuses a folder that is not a complete run (naming what is
missing, writing nothing), computes the trajectory metrics and the rank analysis, renders every figure in memory and
only then writes ``OUT/trajectory.parquet``, ``OUT/ranking.parquet``, ``OUT/report/*.png``, ``OUT/report.md`` and,
last, ``OUT/report.html``. The verdict is computed from the numbers with fixed rules stated beside it.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lhas_ray.evaluation.metrics import (
    HIGHER_IS_BETTER,
    accuracy_matrices,
    missing_units,
    read_long_tables,
    trajectory_metrics,
    trajectory_table,
)
from lhas_ray.evaluation.ranking import NOW, PRIMARY_LATER, Ranking, rank_analysis, ranking_table
from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)

# Section ids of report.html, in page order; "tuning" appears only when OUT/trials.parquet exists.
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
    "timings",
    "tuning",
    "definitions",
)
DEFINITIONS = {
    "immediate": "R[t,t]: accuracy on stage t's eval set right after training on stage t.",
    "gain": "R[t,t] - R[t-1,t]: what stage t taught (a selector that learns nothing also forgets nothing).",
    "acc": "mean over j <= t of R[t,j]: average accuracy on the stages seen so far (ACC_T at the last stage).",
    "forgetting": "mean over j < t of (max over j <= l < t of R[l,j]) - R[t,j] (Chaudhry et al. 2018).",
    "bwt": "mean over i < t of R[t,i] - R[i,i]: backward transfer (GEM).",
    "fwt": "mean over 2 <= i <= t of R[i-1,i] - R[0,i]: forward transfer against the base model (GEM).",
    "lca": "mean probe accuracy over the first beta probe steps (steps 0..beta) on stage t+1 from checkpoint t.",
    "steps_to_threshold": "first probe step whose accuracy reaches the threshold; inf if never.",
    "imbalance_range": "max - min of per-skill accuracy over the eval sets of stages 1..t.",
    "imbalance_cv": "std / mean of per-skill accuracy over the eval sets of stages 1..t.",
    "ood_acc": "mean accuracy over the OOD sets.",
    "ood_gap": "acc - ood_acc: in-distribution minus out-of-distribution accuracy.",
}
_MAX_PROBLEMS = 20


@dataclass
class _Figure:
    """One rendered figure: its file stem, section, title, caption and PNG bytes."""

    name: str
    section: str
    title: str
    caption: str
    png: bytes


@dataclass
class _Run:
    """The validated inputs of a report."""

    out: str
    metrics: pd.DataFrame
    curves: pd.DataFrame | None
    timings: pd.DataFrame | None
    trials: pd.DataFrame | None
    lca_beta: int | None
    threshold: float


# --- loading and validation --------------------------------------------------------------------------------------
def _read_config(store: ResultStore) -> dict:
    """The run's resolved config as a dict (safe YAML loader); ValueError if it does not parse."""
    try:
        cfg = yaml.safe_load(store.read_bytes("config.yaml"))
    except yaml.YAMLError as e:
        raise ValueError(f"{store.path('config.yaml')} is not valid YAML: {e}") from e
    return cfg if isinstance(cfg, dict) else {}


def _expected(cfg: dict) -> dict:
    """The stage count, selector keys and seeds the resolved config promises (whatever of them it states)."""
    out: dict = {}
    if isinstance(cfg.get("stages"), list):
        out["n_stages"] = len(cfg["stages"])
    if isinstance(cfg.get("selectors"), list):
        keys = [s.get("label") or s.get("name") for s in cfg["selectors"] if isinstance(s, dict)]
        out["selectors"] = [k for k in keys if isinstance(k, str)]
    if isinstance(cfg.get("seeds"), list):
        out["seeds"] = [int(s) for s in cfg["seeds"] if isinstance(s, int)]
    return out


def _load(store: ResultStore) -> _Run:
    """Read and validate a run; ValueError naming what is missing when it is not a complete run."""
    if not store.is_run():
        raise ValueError(f"{store.uri} is not a lhas_ray run: it has no config.yaml")
    cfg = _read_config(store)
    ev = cfg.get("evaluation") or {}
    lca_beta, threshold = ev.get("lca_beta"), ev.get("probe_threshold", 0.5)
    if lca_beta is not None and (not isinstance(lca_beta, int) or lca_beta < 0):
        raise ValueError(f"config.yaml: evaluation.lca_beta must be a non-negative integer or null; got {lca_beta!r}")
    if not isinstance(threshold, int | float):
        raise ValueError(f"config.yaml: evaluation.probe_threshold must be a number; got {threshold!r}")
    metrics, curves, timings = read_long_tables(store)
    if metrics is None:
        raise ValueError(f"{store.uri}: the run has no committed metrics (metrics.parquet is missing or uncommitted)")
    problems = missing_units(metrics, **_expected(cfg))
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError(f"{store.uri}: incomplete run, cannot report. Missing:\n  - " + "\n  - ".join(shown) + more)
    trials = None
    if store.exists("trials.parquet"):
        trials = pq.read_table(store.path("trials.parquet"), filesystem=store.fs).to_pandas()
    return _Run(store.uri, metrics, curves, timings, trials, lca_beta, float(threshold))


# --- figures -----------------------------------------------------------------------------------------------------
def _colors(selectors: list[str]) -> dict[str, tuple]:
    """One fixed colour per selector, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(selectors) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(selectors)}


def _png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(n, ncols))
    return -(-n // ncols), ncols


def mean_matrices(metrics: pd.DataFrame) -> dict[str, np.ndarray]:
    """The accuracy matrix R[i, j] of each selector, mean over seeds (row 0 = base, column 0 unused)."""
    traj, R = accuracy_matrices(metrics)
    return {s: R[(traj["selector"] == s).to_numpy()].mean(axis=0) for s in sorted(traj["selector"].unique())}


def _fig_heatmaps(matrices: dict[str, np.ndarray], T: int) -> _Figure:
    nrows, ncols = _grid(len(matrices), 5)
    fig = Figure(figsize=(3.0 * ncols + 0.8, 2.7 * nrows + 0.3))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for ax, (sel, R) in zip(axes.flat, matrices.items(), strict=False):
        M = R[: T + 1, 1 : T + 1]
        im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        if T <= 8:
            for (i, j), v in np.ndenumerate(M):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        ax.set_title(sel, fontsize=9)
        ax.set_xticks(range(T), [str(j) for j in range(1, T + 1)], fontsize=7)
        ax.set_yticks(range(T + 1), ["base"] + [str(i) for i in range(1, T + 1)], fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("eval stage j", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("after stage i", fontsize=7)
    for ax in list(axes.flat)[len(matrices) :]:
        ax.set_visible(False)
    fig.subplots_adjust(hspace=0.35, wspace=0.3)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    return _Figure(
        "accuracy_matrix",
        "accuracy-matrix",
        "Accuracy matrix per selector",
        "R[i, j] = accuracy on stage j's eval set after training through stage i (row 'base' = the model before any "
        "stage), mean over seeds. The diagonal is the immediate accuracy; entries below it show retention.",
        _png(fig),
    )


def _fig_metrics(trajectory: pd.DataFrame, colors: dict[str, tuple]) -> _Figure:
    # The line is the mean over every seed, so a stage where some seed's probe never reached the threshold (inf)
    # draws no point; the band spans the finite values.
    finite = trajectory.assign(value=trajectory["value"].where(np.isfinite(trajectory["value"])))
    g = finite.groupby(["metric", "selector", "stage"])["value"]
    stats = (
        g.agg(["min", "max"]).join(trajectory.groupby(["metric", "selector", "stage"])["value"].mean()).reset_index()
    )
    stats = stats.rename(columns={"value": "mean"})
    stats["mean"] = stats["mean"].where(np.isfinite(stats["mean"]))
    present = [m for m in HIGHER_IS_BETTER if m in set(trajectory["metric"])]
    nrows, ncols = _grid(len(present), 4)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, metric in zip(axes.flat, present, strict=False):
        for sel, color in colors.items():
            s = stats[(stats["metric"] == metric) & (stats["selector"] == sel)]
            if s.empty:
                continue
            ax.plot(s["stage"], s["mean"], marker="o", ms=3, lw=1.3, color=color, label=sel)
            ax.fill_between(s["stage"], s["min"], s["max"], color=color, alpha=0.15, lw=0)
        ax.set_title(f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("stage", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.subplots_adjust(hspace=0.55, wspace=0.3, bottom=0.12)
    return _Figure(
        "metrics_over_stages",
        "metrics-over-stages",
        "Trajectory metrics over stages",
        "Lines: mean over seeds; bands: min to max over seeds. steps_to_threshold: where some seed's probe never "
        "reached the threshold (inf), the mean is not drawn and the band covers the seeds that did. lca and steps_to_threshold stop at T-1 (no probe after the last stage).",
        _png(fig),
    )


def bump_columns(ranking: Ranking) -> list[tuple[str, int]]:
    """The (metric, stage) columns of the bump chart: immediate at stage 1, acc at stages 2..T, then other finals."""
    cols = [NOW]
    T = ranking.final_stage.get("acc", 1)
    cols += [("acc", t) for t in range(2, T + 1)]
    cols += [(m, ranking.final_stage[m]) for m in ("forgetting", "lca", "ood_acc") if m in ranking.final_stage]
    return cols


def _fig_bump(ranking: Ranking, colors: dict[str, tuple]) -> _Figure:
    cols = bump_columns(ranking)
    r = ranking.ranks.set_index(["metric", "stage", "selector"])["rank"]
    fig = Figure(figsize=(max(5.0, 1.3 * len(cols) + 2.5), 0.45 * len(colors) + 2.0))
    ax = fig.subplots()
    n_acc = 1 + sum(1 for m, _ in cols if m == "acc")
    for sel, color in colors.items():
        y = [r.get((m, t, sel), np.nan) for m, t in cols]
        ax.plot(range(len(cols)), y, marker="o", color=color, lw=2, label=sel)
        ax.annotate(sel, (len(cols) - 1, y[-1]), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
        ax.annotate(sel, (0, y[0]), xytext=(-6, 0), textcoords="offset points", va="center", ha="right", fontsize=8)
    if n_acc < len(cols):
        ax.axvline(n_acc - 0.5, color="0.6", ls=":", lw=1)
    ax.set_xticks(range(len(cols)), [f"{m}@{t}" for m, t in cols], fontsize=8, rotation=20)
    ax.set_yticks(range(1, len(colors) + 1))
    ax.set_ylim(len(colors) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = best)")
    ax.set_xlim(-1.2, len(cols) - 1 + 1.2)
    return _Figure(
        "bump_chart",
        "ranks",
        "Ranks from immediate to final",
        "Rank of each selector (mean over seeds; ties share the average rank) by immediate accuracy after stage 1, "
        "then by average accuracy over the stages seen so far after each later stage; right of the dotted line, the "
        "final ranking by other long-horizon metrics (metric@stage).",
        _png(fig),
    )


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both x and y (both maximised)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ge = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
    gt = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
    return ~(ge & gt).any(axis=1)


def _fig_pareto(ranking: Ranking, colors: dict[str, tuple]) -> _Figure | None:
    ys = [(m, ranking.final_stage[m]) for m in ("acc", "forgetting", "lca", "ood_acc") if m in ranking.final_stage]
    r = ranking.ranks

    def board(metric: str, stage: int) -> pd.DataFrame:
        return r[(r["metric"] == metric) & (r["stage"] == stage)].set_index("selector")

    now = board(*NOW)
    if now.empty or not ys:
        return None
    nrows, ncols = _grid(len(ys), 2)
    fig = Figure(figsize=(5.5 * ncols, 4.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flat
    for ax, (m, t) in zip(axes, ys, strict=False):
        later = board(m, t)
        sel = [s for s in colors if s in now.index and s in later.index and np.isfinite(later.loc[s, "mean"])]
        x, y = now.loc[sel, "mean"].to_numpy(), later.loc[sel, "mean"].to_numpy()
        front = pareto_front(x, y if HIGHER_IS_BETTER[m] else -y)
        for i, s in enumerate(sel):
            xerr = [[x[i] - now.loc[s, "lo"]], [now.loc[s, "hi"] - x[i]]]
            yerr = [[y[i] - later.loc[s, "lo"]], [later.loc[s, "hi"] - y[i]]]
            ax.errorbar(x[i], y[i], xerr=xerr, yerr=yerr, fmt="o", color=colors[s], ms=6, lw=0.8, capsize=2)
            if front[i]:
                ax.scatter(x[i], y[i], s=160, facecolors="none", edgecolors="red", lw=1.5, zorder=3)
            ax.annotate(s, (x[i], y[i]), xytext=(5, 4), textcoords="offset points", fontsize=8)
        order = np.argsort(x[front])
        ax.plot(x[front][order], y[front][order], color="red", lw=1, ls="--", zorder=2)
        ax.set_xlabel(f"{NOW[0]} @ stage {NOW[1]} (higher is better)", fontsize=8)
        ax.set_ylabel(f"{m} @ stage {t} ({'higher' if HIGHER_IS_BETTER[m] else 'lower'} is better)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(wspace=0.3, hspace=0.3)
    return _Figure(
        "pareto",
        "pareto",
        "Immediate versus long-horizon",
        "Each point: a selector's mean over seeds, with bootstrap intervals over seeds. Red rings and the dashed line: "
        "the Pareto front (no other selector is better on both axes, each in its own direction).",
        _png(fig),
    )


def _fig_timings(timings: pd.DataFrame) -> _Figure:
    per_traj = timings.groupby(["selector", "seed", "phase"])["seconds"].sum().reset_index()
    by_sel = per_traj.groupby(["selector", "phase"])["seconds"].mean().unstack(fill_value=0.0)
    by_stage = (
        timings.groupby(["stage", "phase"])["seconds"].sum().unstack(fill_value=0.0)
        / timings[["selector", "seed"]].drop_duplicates().shape[0]
    )
    known = ("ray_start", "scoring", "selection", "training", "evaluation", "probe")
    seen = set(by_sel.columns) | set(by_stage.columns)
    phases = [p for p in known if p in seen] + sorted(seen - set(known))
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    for ax, table, xlabel in ((axes[0], by_sel, "selector"), (axes[1], by_stage, "stage")):
        bottom = np.zeros(len(table))
        for k, phase in enumerate(phases):
            v = table[phase].to_numpy() if phase in table else np.zeros(len(table))
            ax.bar([str(i) for i in table.index], v, bottom=bottom, color=cmap(k % cmap.N), label=phase)
            bottom += v
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("seconds", fontsize=8)
        ax.tick_params(labelsize=7)
        if xlabel == "selector":
            ax.tick_params(axis="x", rotation=30)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _Figure(
        "timings",
        "timings",
        "Where the time went",
        "Left: wall seconds per trajectory (all stages), mean over seeds, by phase. Right: wall seconds per stage, "
        "mean over trajectories, by phase (stage 0: start-up and base-model evaluation).",
        _png(fig),
    )


def _trial_columns(trials: pd.DataFrame) -> tuple[str | None, str | None]:
    """Guess the trial-order and objective columns of a tuning table."""
    order = next((c for c in ("trial_number", "trial", "number", "trial_id", "iteration") if c in trials), None)
    objective = next((c for c in ("objective", "value", "score", "metric_value") if c in trials), None)
    return order, objective


def _fig_trials(trials: pd.DataFrame) -> _Figure | None:
    """The tuning section: objective over trials, the immediate-vs-objective Pareto front, parameter importances."""
    order, objective = _trial_columns(trials)
    if objective is None or trials.empty:
        return None
    t = trials.sort_values(order, kind="stable") if order else trials
    y = pd.to_numeric(t[objective], errors="coerce").to_numpy(dtype=float)
    status = t["status"].to_numpy() if "status" in t else np.full(len(t), "completed")
    done = status == "completed"
    immediate = "immediate_score" if "immediate_score" in t else None
    panels = ["trials"] + (["pareto"] if immediate and done.sum() >= 1 else [])
    importances = pd.Series(dtype=float)
    if any(c.startswith("param_") for c in t.columns):
        from lhas_ray.search_space import param_importances

        importances = param_importances(t, objective).sort_values()
        if not importances.empty:
            panels.append("importances")
    fig = Figure(figsize=(5.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    captions = []
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "trials":
            x = np.arange(1, len(t) + 1)
            ax.plot(x[done], y[done], "o", ms=5, color="tab:blue", label="completed")
            if (~done).any():
                ax.plot(x[~done], y[~done], "o", ms=5, mfc="none", color="tab:gray", label="stopped or failed")
            best = np.fmax.accumulate(np.where(done & np.isfinite(y), y, -np.inf))
            ax.step(
                x, np.where(np.isfinite(best), best, np.nan), where="post", color="tab:red", lw=1, label="best so far"
            )
            ax.set_xlabel("trial (in order)" if order else "trial (file order)", fontsize=8)
            ax.set_ylabel(objective, fontsize=8)
            ax.legend(fontsize=7)
            ax.set_title("Objective over trials", fontsize=9)
            captions.append(f"Objective over trials: column {objective!r} of trials.parquet, best completed so far.")
        elif panel == "pareto":
            xs = pd.to_numeric(t[immediate], errors="coerce").to_numpy(dtype=float)[done]
            ys = y[done]
            front = pareto_front(xs, ys)
            ax.plot(xs, ys, "o", ms=5, color="tab:blue")
            ax.scatter(xs[front], ys[front], s=140, facecolors="none", edgecolors="red", lw=1.5, zorder=3)
            o = np.argsort(xs[front])
            ax.plot(xs[front][o], ys[front][o], color="red", ls="--", lw=1)
            ax.set_xlabel(f"{immediate} (higher is better)", fontsize=8)
            ax.set_ylabel(f"{objective} (higher is better)", fontsize=8)
            ax.set_title("Pareto front", fontsize=9)
            captions.append("Pareto front: completed trials, immediate score against objective; red: the front.")
        else:
            ax.barh(importances.index, importances.to_numpy(), color="tab:green")
            ax.set_xlabel(f"importance for {objective} (fANOVA, sums to 1)", fontsize=8)
            ax.set_title("Parameter importances", fontsize=9)
            captions.append("Parameter importances: Optuna's fANOVA importance over the completed trials.")
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(wspace=0.35)
    return _Figure("tuning", "tuning", "Tuning", " ".join(captions), _png(fig))


# --- the verdict ---------------------------------------------------------------------------------------------------
def _fmt_ci(v: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def _leaders(ranks: pd.DataFrame, metric: str, stage: int) -> pd.DataFrame:
    return ranks[(ranks["metric"] == metric) & (ranks["stage"] == stage)].sort_values(["rank", "selector"])


def verdict(ranking: Ranking) -> list[str]:
    """Plain-language findings computed from the rank analysis: who wins now, who wins later, reversal, how sure."""
    lines: list[str] = []
    ranks, ci = ranking.ranks, f"{ranking.ci:.0%}"
    notes = [f"Note: {n[0].upper()}{n[1:]}." for n in ranking.notes if "no " + repr(ranking.baseline) not in n]
    if len(ranking.selectors) < 2:
        notes = [n for n in notes if "one selector" not in n]
        return [f"Only one selector was run ({ranking.selectors[0]}): there is nothing to rank.", *notes]
    T = ranking.final_stage.get(PRIMARY_LATER, 1)

    def who_leads(metric: str, stage: int, what: str) -> tuple[list[str], str]:
        board = _leaders(ranks, metric, stage)
        top = board[board["rank"] == board["rank"].min()]
        names = top["selector"].tolist()
        first = top.iloc[0]
        runner = board[board["rank"] > first["rank"]].head(1)
        tail = f"; runner-up {runner.iloc[0]['selector']} with {runner.iloc[0]['mean']:.3f}" if len(runner) else ""
        lead = " and ".join(names) + (" tie" if len(names) > 1 else " leads")
        sure = f"; first in {first['p_best']:.0%} of bootstrap resamples of the seeds" if len(names) == 1 else ""
        return (
            names,
            f"{what}: {lead} with {first['mean']:.3f} ({ci} CI [{first['lo']:.3f}, {first['hi']:.3f}]){tail}{sure}.",
        )

    now_names, text = who_leads(*NOW, f"Now (immediate accuracy after stage {NOW[1]})")
    lines.append(text)
    if T <= 1:
        lines.append("Only one stage was run, so 'later' is 'now': this run holds no long-horizon evidence.")
    else:
        later_names, text = who_leads(PRIMARY_LATER, T, f"Later (average accuracy over all {T} stages after stage {T})")
        lines.append(text)
        others = []
        for m, label in (
            ("forgetting", "least forgetting"),
            ("lca", "fastest adaptation (LCA)"),
            ("ood_acc", "best OOD accuracy"),
        ):
            if m in ranking.final_stage:
                board = _leaders(ranks, m, ranking.final_stage[m])
                others.append(f"{label}: {', '.join(board[board['rank'] == board['rank'].min()]['selector'])}")
        if others:
            lines.append("Other long-horizon leaders at the final stage: " + "; ".join(others) + ".")
        tau = ranking.tau.set_index("metric")
        if PRIMARY_LATER in tau.index:
            r = tau.loc[PRIMARY_LATER]
            if r["tau_hi"] < 0:
                kind = "reverses"
            elif r["tau_lo"] > 0:
                kind = "holds (the two rankings agree)"
            else:
                kind = "is not clearly related either way (the interval includes 0)"
            same = set(now_names) == set(later_names)
            leader = (
                "The same selector leads now and later."
                if same
                else f"The leader changes from {' and '.join(now_names)} (now) to {' and '.join(later_names)} (later)."
            )
            lines.append(
                f"Does the ranking reverse? From immediate accuracy at stage {NOW[1]} to average accuracy at stage {T}, "
                f"the ranking {kind}: Kendall tau-b {_fmt_ci(r['tau_b'], r['tau_lo'], r['tau_hi'], True)}, "
                f"{r['discordant']:.0%} of selector pairs discordant [{r['discordant_lo']:.0%}, {r['discordant_hi']:.0%}]. "
                f"{leader}"
            )
            rev = tau[(tau["tau_hi"] < 0)].index.difference([PRIMARY_LATER]).tolist()
            if rev:
                lines.append(
                    f"Other long-horizon rankings that reverse the immediate one (tau-b interval below 0): {', '.join(rev)}."
                )
            else:
                lines.append(
                    "No other long-horizon ranking clearly reverses the immediate one (no tau-b interval below 0)."
                )
    if ranking.baseline not in ranking.selectors:
        lines.append(f"Myopia: no {ranking.baseline!r} selector was run, so the myopia test was not done.")
    elif T > 1 and not ranking.myopia.empty:
        my = ranking.myopia[ranking.myopia["metric"] == PRIMARY_LATER]
        sure = my[my["confident"]]
        maybe = my[my["myopic"] & ~my["confident"]]
        desc = [
            f"{r.selector} (now {_fmt_ci(r.now_diff, r.now_lo, r.now_hi, True)}, later "
            f"{_fmt_ci(r.later_diff, r.later_lo, r.later_hi, True)}, p_myopic {r.p_myopic:.2f})"
            for r in sure.itertuples()
        ]
        base = ranking.baseline
        if desc:
            lines.append(
                f"Myopic against {base} on final average accuracy (both {ci} intervals exclude 0): "
                + "; ".join(desc)
                + "."
            )
        if len(maybe):
            lines.append(
                f"Better than {base} now and worse later, but not surely (an interval includes 0): {', '.join(maybe['selector'])}."
            )
        if not len(sure) and not len(maybe):
            lines.append(f"No selector is better than {base} now and worse later on final average accuracy.")
        other = ranking.myopia[(ranking.myopia["metric"] != PRIMARY_LATER) & ranking.myopia["confident"]]
        if len(other):
            per = other.groupby("selector")["metric"].apply(lambda s: ", ".join(s))
            lines.append(
                "Surely myopic on other long-horizon metrics: " + "; ".join(f"{s} ({m})" for s, m in per.items()) + "."
            )
    n = len(ranking.seeds)
    lines.append(
        f"How sure: {n} seed(s) per selector; intervals are {ci} percentile bootstrap intervals over seeds "
        f"({ranking.n_boot} resamples, paired across selectors)."
        + (" With fewer than 5 seeds, rankings among close selectors are not reliable." if n < 5 else "")
    )
    return lines + notes


# --- tables ---------------------------------------------------------------------------------------------------------
def _tau_table(ranking: Ranking) -> pd.DataFrame:
    t = ranking.tau
    return pd.DataFrame(
        {
            "long-horizon metric": [f"{m}@{s}" for m, s in zip(t["metric"], t["stage"], strict=True)],
            "selectors": t["n_selectors"].astype(int).astype(str),
            f"tau-b [{ranking.ci:.0%} CI]": [
                _fmt_ci(*v, True) for v in zip(t["tau_b"], t["tau_lo"], t["tau_hi"], strict=True)
            ],
            "discordant pairs": [
                f"{d:.0%} [{lo:.0%}, {hi:.0%}]"
                for d, lo, hi in zip(t["discordant"], t["discordant_lo"], t["discordant_hi"], strict=True)
            ],
        }
    )


def _myopia_tables(ranking: Ranking) -> tuple[pd.DataFrame, pd.DataFrame]:
    my = ranking.myopia
    if my.empty:
        return pd.DataFrame(), pd.DataFrame()
    p = my[my["metric"] == PRIMARY_LATER]
    primary = pd.DataFrame(
        {
            "selector": p["selector"],
            f"now: immediate@{NOW[1]} minus {ranking.baseline}": [
                _fmt_ci(*v, True) for v in zip(p["now_diff"], p["now_lo"], p["now_hi"], strict=True)
            ],
            f"later: {PRIMARY_LATER}@{ranking.final_stage.get(PRIMARY_LATER)} minus {ranking.baseline}": [
                _fmt_ci(*v, True) for v in zip(p["later_diff"], p["later_lo"], p["later_hi"], strict=True)
            ],
            "p_myopic": p["p_myopic"].map("{:.2f}".format),
            "verdict": p["verdict"],
        }
    )
    cell = np.where(my["confident"], "myopic", np.where(my["myopic"], "myopic?", ""))
    grid = (
        my.assign(cell=cell, col=my["metric"] + "@" + my["stage"].astype(str))
        .pivot(index="selector", columns="col", values="cell")
        .reindex(
            columns=[
                f"{m}@{s}"
                for m, s in ranking.final_stage.items()
                if f"{m}@{s}" in set(my["metric"] + "@" + my["stage"].astype(str))
            ]
        )
        .rename_axis(columns=None)
        .reset_index()
    )
    return primary.reset_index(drop=True), grid


def _mean_std_rank(row: pd.Series) -> str:
    """'mean ± std (#rank)'; a never-reached steps_to_threshold reads 'inf' and an undefined std is left out."""
    spread = f" ± {row['std']:.3f}" if np.isfinite(row["std"]) else ""
    return f"{row['mean']:.3f}{spread} (#{row['rank']:g})"


def _final_table(ranking: Ranking) -> pd.DataFrame:
    r = ranking.ranks
    cols = {}
    for m, t in ranking.final_stage.items():
        s = r[(r["metric"] == m) & (r["stage"] == t)].set_index("selector")
        cols[f"{m}@{t}"] = [_mean_std_rank(s.loc[sel]) if sel in s.index else "" for sel in ranking.selectors]
    return pd.DataFrame({"selector": ranking.selectors, **cols})


def _md_table(df: pd.DataFrame) -> str:
    """A pipe table for Markdown."""
    if df.empty:
        return "_(none)_"
    cells = [[str(c) for c in df.columns]] + [[str(v).replace("|", "\\|") for v in row] for row in df.to_numpy()]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join(" --- " for _ in df.columns) + "|")
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return "<div class='scroll'>" + df.to_html(index=False, escape=True, border=0, classes="tbl", na_rep="") + "</div>"


# --- assembly ------------------------------------------------------------------------------------------------------
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


def _header_facts(run: _Run, ranking: Ranking, T: int) -> list[tuple[str, str]]:
    facts = [
        ("run folder", run.out),
        (f"selectors ({len(ranking.selectors)})", ", ".join(ranking.selectors)),
        (f"seeds ({len(ranking.seeds)})", ", ".join(map(str, ranking.seeds))),
        ("stages", f"{T} (1..{T}; stage 0 is the base model)"),
        (
            "probe metrics",
            f"lca_beta = {run.lca_beta if run.lca_beta is not None else 'all steps'}, threshold = {run.threshold:g}",
        ),
        ("bootstrap", f"{ranking.n_boot} resamples of the seeds, {ranking.ci:.0%} intervals"),
    ]
    if run.curves is None or not (run.curves["split"] == "probe").any():
        facts.append(("probe curves", "none recorded: lca and steps_to_threshold are absent"))
    return facts


def _render(run: _Run, trajectory: pd.DataFrame, ranking: Ranking, figures: list[_Figure], T: int) -> tuple[str, str]:
    """The HTML page and its Markdown twin."""
    facts = _header_facts(run, ranking, T)
    lines = verdict(ranking)
    primary, grid = _myopia_tables(ranking)
    by_section: dict[str, list[_Figure]] = {}
    for f in figures:
        by_section.setdefault(f.section, []).append(f)
    tables = {
        "rank-reversal": [("Immediate ranking versus each long-horizon ranking", _tau_table(ranking))],
        "myopia": [],
        "final-metrics": [("Each metric at its final stage: mean ± std over seeds (#rank)", _final_table(ranking))],
    }
    if ranking.baseline in ranking.selectors:
        tables["myopia"] = [
            (f"Against {ranking.baseline}, paired by seed (positive = better than {ranking.baseline})", primary),
            (
                "Myopia on every long-horizon metric (myopic: both intervals exclude 0; myopic?: point estimates only)",
                grid,
            ),
        ]
    texts = {
        "ranks": "",
        "rank-reversal": "Kendall tau-b between the ranking by immediate accuracy after stage 1 and each long-horizon "
        "ranking (+1: same order, -1: reversed); discordant pairs: share of selector pairs ordered oppositely.",
        "myopia": (
            f"A selector is myopic when it beats {ranking.baseline} on immediate accuracy after stage 1 and loses to it "
            "on a long-horizon metric at the final stage; p_myopic is the share of bootstrap resamples where both hold."
            if ranking.baseline in ranking.selectors
            else f"No {ranking.baseline!r} selector was run, so the myopia test was not done."
        ),
        "timings": "" if run.timings is not None else "No timings were recorded.",
        "tuning": "",
    }
    titles = {
        "run": "Run",
        "verdict": "Verdict",
        "accuracy-matrix": "Accuracy matrix",
        "metrics-over-stages": "Metrics over stages",
        "ranks": "Ranks",
        "pareto": "Immediate versus long-horizon",
        "rank-reversal": "Rank reversal",
        "myopia": "Myopia",
        "final-metrics": "Final metrics",
        "timings": "Timings",
        "tuning": "Tuning",
        "definitions": "Definitions",
    }
    if run.trials is not None and not by_section.get("tuning"):
        texts["tuning"] = f"trials.parquet has no objective column I recognise (columns: {list(run.trials.columns)})."
    sections = [s for s in SECTIONS if s != "tuning" or run.trials is not None]

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
                "<p><small>Rules: 'leads' = rank 1 by mean over seeds; a ranking 'reverses' when the tau-b interval "
                "lies below 0 and 'holds' when it lies above 0; 'myopic' = better than random now and worse later, "
                "'surely' when both intervals exclude 0.</small></p>"
            )
            md += [f"- {x}" for x in lines] + [""]
        elif sec == "definitions":
            h.append(
                "<dl>"
                + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS.items())
                + "</dl>"
            )
            md += [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()] + [""]
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
            h.append(f"<h3>{html.escape(caption)}</h3>{_html_table(df)}")
            md += [f"### {caption}", "", _md_table(df), ""]
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md)


def write_report(out: str, *, n_boot: int = 1000, seed: int = 0, tensorboard: bool = True) -> str:
    """Write OUT/report.html (images embedded), OUT/report/*.png, OUT/report.md and the metric tables; returns the HTML path."""
    store = ResultStore(out)
    run = _load(store)
    trajectory = trajectory_metrics(run.metrics, run.curves, lca_beta=run.lca_beta, threshold=run.threshold)
    ranking = rank_analysis(trajectory, n_boot=n_boot, seed=seed)
    T = int(run.metrics["stage"].max())
    colors = _colors(ranking.selectors)
    figures = [
        _fig_heatmaps(mean_matrices(run.metrics), T),
        _fig_metrics(trajectory, colors),
        _fig_bump(ranking, colors),
        _fig_pareto(ranking, colors),
        _fig_timings(run.timings) if run.timings is not None else None,
        _fig_trials(run.trials) if run.trials is not None else None,
    ]
    figures = [f for f in figures if f is not None]
    page, md = _render(run, trajectory, ranking, figures, T)

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


# --- TensorBoard ---------------------------------------------------------------------------------------------------
_TB_SUFFIX = ".trajectory"


def write_tensorboard(store_or_out: ResultStore | str, trajectory: pd.DataFrame) -> str | None:
    """Write the trajectory metrics per stage as scalars under OUT/tensorboard/<selector>/<seed>/; local stores only."""
    store = store_or_out if isinstance(store_or_out, ResultStore) else ResultStore(store_or_out)
    root = store.local_path("tensorboard")
    if root is None:
        logger.info("TensorBoard trajectory scalars skipped: %s is not on local disk", store.uri)
        return None
    from torch.utils.tensorboard import SummaryWriter

    for (selector, seed), rows in trajectory.groupby(["selector", "seed"], sort=True):
        logdir = os.path.join(root, str(selector), str(seed))
        for old in glob.glob(os.path.join(logdir, f"events.out.tfevents.*{_TB_SUFFIX}")):
            os.remove(old)  # rerunning the report replaces its own scalars instead of duplicating them
        writer = SummaryWriter(log_dir=logdir, filename_suffix=_TB_SUFFIX)
        for r in rows.itertuples(index=False):
            if np.isfinite(r.value):
                writer.add_scalar(f"trajectory/{r.metric}", float(r.value), global_step=int(r.stage))
        writer.close()
    return root
