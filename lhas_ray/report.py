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

from lhas_ray.confirmation import CONFIRMATION, HELDOUT, IN_SAMPLE, confirmation_lines
from lhas_ray.evaluation.metrics import (
    HIGHER_IS_BETTER,
    accuracy_matrices,
    definitions,
    missing_units,
    read_long_tables,
    trajectory_metrics,
    trajectory_table,
    untargeted_skills,
)
from lhas_ray.evaluation.ranking import (
    MIN_SEEDS_TAU_INTERVAL,
    NOW,
    PRIMARY_LATER,
    TEST_NAME,
    Ranking,
    myopia_verdict,
    rank_analysis,
    ranking_table,
)
from lhas_ray.evaluation.stats import min_attainable_p
from lhas_ray.store import ResultStore

logger = logging.getLogger(__name__)

# Section ids of report.html, in page order; "tuning" appears only when OUT/trials.parquet exists, "objective-terms"
# only when a selector recorded its objective's terms (lhas).
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
    "objective-terms",
    "timings",
    "tuning",
    "confirmation",
    "definitions",
)
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
class _Settings:
    """What the report needs from the run's config beyond the tables (defaults for folders that predate a field)."""

    baselines: list[str]
    forgetting: str
    censor_at: float | None
    resample: str
    data_seed: int | None
    alpha: float = 0.05
    myopia_metrics: list[str] | None = None


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
    settings: _Settings
    pool_leaks: pd.DataFrame | None = None
    terms: pd.DataFrame | None = None
    confirmation: pd.DataFrame | None = None  # OUT/confirmation.parquet of a confirmed sweep
    sample: str | None = None  # "held-out" or "in-sample" where the run belongs to a sweep's protocol, else None
    objective: str = ""  # tune.objective, the quantity the confirmation's headline tests


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
    leaks = None
    if store.exists("pool_leaks.parquet"):
        leaks = pq.read_table(store.path("pool_leaks.parquet"), filesystem=store.fs).to_pandas()
    terms = store.read_table("terms")
    confirmation = None
    if store.exists(CONFIRMATION):
        confirmation = pq.read_table(store.path(CONFIRMATION), filesystem=store.fs).to_pandas()
    tune_cfg = cfg.get("tune") or {}
    return _Run(
        store.uri,
        metrics,
        curves,
        timings,
        trials,
        lca_beta,
        float(threshold),
        _settings(cfg),
        leaks,
        None if terms is None else terms.to_pandas(),
        confirmation,
        run_sample(cfg, trials is not None),
        str(tune_cfg.get("objective", "")),
    )


def run_sample(cfg: dict, is_sweep: bool) -> str | None:
    """Whether a run's numbers are held-out (a confirmation: it names the development seeds it avoids), in-sample (a
    sweep, or a run on the development seeds of a config that holds seeds out), or neither (a plain run: None)."""
    tune = cfg.get("tune") or {}
    if tune.get("development_seeds"):
        return HELDOUT
    return IN_SAMPLE if is_sweep or tune.get("heldout_seeds") else None


SAMPLE_TEXT = {
    HELDOUT: "held-out: seeds the sweep never saw, each with a fresh data draw",
    IN_SAMPLE: "in-sample: the development seeds the weights were tuned on (optimistic for tuned selectors)",
}


def _settings(cfg: dict) -> _Settings:
    """The report's settings from the resolved config: baselines, forgetting variant, censoring, data draws."""
    ev, data, probe = cfg.get("evaluation") or {}, cfg.get("data") or {}, cfg.get("probe") or {}
    baselines = ev.get("baselines", ["random"])
    forgetting = ev.get("forgetting", "since_trained")
    if not isinstance(baselines, list) or not all(isinstance(b, str) for b in baselines):
        raise ValueError(f"config.yaml: evaluation.baselines must be a list of selector keys; got {baselines!r}")
    if forgetting not in ("since_trained", "any_earlier"):
        raise ValueError(f"config.yaml: evaluation.forgetting must be since_trained or any_earlier; got {forgetting!r}")
    steps = probe.get("steps")
    myopia_metrics = ev.get("myopia_metrics")
    if myopia_metrics is not None and not (
        isinstance(myopia_metrics, list) and all(isinstance(m, str) for m in myopia_metrics)
    ):
        raise ValueError(
            f"config.yaml: evaluation.myopia_metrics must be a list of metric names; got {myopia_metrics!r}"
        )
    return _Settings(
        baselines=baselines,
        forgetting=forgetting,
        censor_at=float(steps) + 1 if isinstance(steps, int) else None,
        resample=data.get("resample", "fixed"),
        data_seed=data.get("seed", 0),
        myopia_metrics=myopia_metrics,
    )


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
    stats = trajectory.groupby(["metric", "selector", "stage"])["value"].agg(["min", "max", "mean"]).reset_index()
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
        "Lines: mean over seeds; bands: min to max over seeds. steps_to_threshold counts a seed whose probe never "
        "reached the threshold as probe steps + 1 (reached_threshold: the share that did). The probe metrics stop at "
        "T-1 (no probe after the last stage).",
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
            xerr = np.nan_to_num([[x[i] - now.loc[s, "lo"]], [now.loc[s, "hi"] - x[i]]])
            yerr = np.nan_to_num([[y[i] - later.loc[s, "lo"]], [later.loc[s, "hi"] - y[i]]])
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
        "Each point: a selector's mean over seeds, with 95% t-intervals of the mean (none with one seed). Red rings "
        "and the dashed line: "
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
    """'v [lo, hi]', or just 'v' where no interval was computed."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f.format(v)
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def _fmt_p(p: float) -> str:
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
    return names, f"{what}: {lead} with {_fmt_ci(first['mean'], first['lo'], first['hi'])}{ci}{tail}."


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
        finding = f"Significantly, {finding} (Holm-adjusted p = {_fmt_p(adj)} < {ranking.alpha:g})."
    else:
        finding = (
            f"Neither agreement nor reversal is significant (Holm-adjusted p = {_fmt_p(adj)} over the "
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
            f"{r.selector} (now {_fmt_ci(r.now_diff, r.now_lo, r.now_hi, True)}, later "
            f"{_fmt_ci(r.later_diff, r.later_lo, r.later_hi, True)}"
            + ("" if ranking.descriptive else f", adjusted p {_fmt_p(r.p_holm)}")
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


def _evidence_line(ranking: Ranking, settings: _Settings) -> str:
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


def verdict(ranking: Ranking, settings: _Settings | None = None) -> list[str]:
    """Plain-language findings computed from the rank analysis; each claim says what it rests on."""
    # Without settings the absent baselines are known only from the ranking's notes: keep those notes then.
    said = settings is not None  # the "Myopia: no 'x' selector was run" line below names them
    settings = settings or _Settings(ranking.baselines, "since_trained", None, "fixed", None)
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


# --- tables ---------------------------------------------------------------------------------------------------------
def _tau_table(ranking: Ranking) -> pd.DataFrame:
    t = ranking.tau
    out = pd.DataFrame(
        {
            "long-horizon metric": [f"{m}@{s}" for m, s in zip(t["metric"], t["stage"], strict=True)],
            "selectors": t["n_selectors"].astype(int).astype(str),
            "tau-b of mean rankings": t["tau_b"].map("{:+.3f}".format),
            "discordant pairs": t["discordant"].map("{:.0%}".format),
        }
    )
    if not ranking.descriptive:
        out[f"mean per-seed tau-b [{ranking.level:.0%} t-interval]"] = [
            _fmt_ci(*v, True) for v in zip(t["seed_tau"], t["seed_tau_lo"], t["seed_tau_hi"], strict=True)
        ]
        out["p (sign-flip, two-sided)"] = t["p_raw"].map(_fmt_p)
        out["p (Holm, family reversal)"] = t["p_holm"].map(_fmt_p)
    return out


def _myopia_tables(ranking: Ranking) -> tuple[pd.DataFrame, pd.DataFrame]:
    my = ranking.myopia
    if my.empty:
        return pd.DataFrame(), pd.DataFrame()
    p = my[my["metric"] == PRIMARY_LATER]
    primary = pd.DataFrame(
        {
            "baseline": p["baseline"],
            "selector": p["selector"],
            f"now: immediate@{NOW[1]} minus baseline": [
                _fmt_ci(*v, True) for v in zip(p["now_diff"], p["now_lo"], p["now_hi"], strict=True)
            ],
            f"later: {PRIMARY_LATER}@{ranking.final_stage.get(PRIMARY_LATER)} minus baseline": [
                _fmt_ci(*v, True) for v in zip(p["later_diff"], p["later_lo"], p["later_hi"], strict=True)
            ],
        }
    )
    if not ranking.descriptive:
        primary["p now (one-sided)"] = p["p_now"].map(_fmt_p)
        primary["p later (one-sided)"] = p["p_later"].map(_fmt_p)
        primary["p (Holm, family myopia)"] = p["p_holm"].map(_fmt_p)
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


def _differences_table(ranking: Ranking) -> pd.DataFrame:
    """Every selector minus each baseline per metric at its final stage, with raw and Holm-adjusted p-values."""
    d = ranking.differences
    if d.empty or ranking.descriptive:
        return pd.DataFrame()
    cell = [
        f"{_fmt_ci(v, lo, hi, True)} p={_fmt_p(pr)}/{_fmt_p(ph)}" + ("*" if ph < ranking.alpha else "")
        for v, lo, hi, pr, ph in zip(d["diff"], d["lo"], d["hi"], d["p_raw"], d["p_holm"], strict=True)
    ]
    return (
        d.assign(cell=cell, col=d["metric"] + "@" + d["stage"].astype(str), row=d["baseline"] + ": " + d["selector"])
        .pivot(index="row", columns="col", values="cell")
        .rename_axis(index="baseline: selector", columns=None)
        .reset_index()
    )


def _terms_table(terms: pd.DataFrame) -> pd.DataFrame:
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


def _final_table(ranking: Ranking) -> pd.DataFrame:
    r = ranking.ranks
    cols = {}
    for m, t in ranking.final_stage.items():
        s = r[(r["metric"] == m) & (r["stage"] == t)].set_index("selector")
        cols[f"{m}@{t}"] = [_mean_std_rank(s.loc[sel]) if sel in s.index else "" for sel in ranking.selectors]
    return pd.DataFrame({"selector": ranking.selectors, **cols})


def _confirmation_tables(table: pd.DataFrame, alpha: float) -> list[tuple[str, pd.DataFrame]]:
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
            else _fmt_ci(d, lo, hi, True)
            + ("" if not np.isfinite(pr) else f" p={_fmt_p(pr)}/{_fmt_p(ph)}" + ("*" if ph < alpha else ""))
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
        ("baselines", ", ".join(ranking.baselines) or "none run"),
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


def _render(run: _Run, trajectory: pd.DataFrame, ranking: Ranking, figures: list[_Figure], T: int) -> tuple[str, str]:
    """The HTML page and its Markdown twin."""
    facts = _header_facts(run, ranking, T)
    lines = verdict(ranking, run.settings)
    primary, grid = _myopia_tables(ranking)
    defs = definitions(run.settings.forgetting)
    by_section: dict[str, list[_Figure]] = {}
    for f in figures:
        by_section.setdefault(f.section, []).append(f)
    tables = {
        "rank-reversal": [("Immediate ranking versus each long-horizon ranking", _tau_table(ranking))],
        "myopia": [],
        "final-metrics": [("Each metric at its final stage: mean ± std over seeds (#rank)", _final_table(ranking))],
        "objective-terms": []
        if run.terms is None or run.terms.empty
        else [("Contribution of each term to J of the selected set, mean over seeds", _terms_table(run.terms))],
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
        diff = _differences_table(ranking)
        if not diff.empty:
            tables["myopia"].append(
                (
                    "Every metric at its final stage minus the baseline: mean [t-interval] p=raw/Holm "
                    "(family difference, two-sided; * = adjusted p < alpha)",
                    diff,
                )
            )
    if run.confirmation is not None:
        tables["confirmation"] = _confirmation_tables(run.confirmation, run.settings.alpha)
    if run.sample:  # every table of a sweep's protocol says which sample its numbers come from
        for sec, items in tables.items():
            if sec != "confirmation":
                tables[sec] = [(f"{caption} [{run.sample}]", df) for caption, df in items]
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
        "confirmation": "Held-out confirmation",
        "objective-terms": "Objective terms",
        "definitions": "Definitions",
    }
    if run.trials is not None and not by_section.get("tuning"):
        texts["tuning"] = f"trials.parquet has no objective column I recognise (columns: {list(run.trials.columns)})."
    has_terms = run.terms is not None and not run.terms.empty
    shown = {
        "tuning": run.trials is not None,
        "objective-terms": has_terms,
        "confirmation": run.confirmation is not None,
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
            h.append(f"<h3>{html.escape(caption)}</h3>{_html_table(df)}")
            md += [f"### {caption}", "", _md_table(df), ""]
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md)


def write_report(out: str, *, tensorboard: bool = True) -> str:
    """Write OUT/report.html (images embedded), OUT/report/*.png, OUT/report.md and the metric tables; returns the HTML path."""
    store = ResultStore(out)
    run = _load(store)
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
