"""The report's figures, rendered in memory as PNG bytes: accuracy heatmaps, metrics over stages, rank bumps,
immediate versus long-horizon, timings, and the tuning panels (read from the sweep's own tables).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lhas_ray.evaluation.definitions import HIGHER_IS_BETTER
from lhas_ray.evaluation.ranking import (
    NOW,
    Ranking,
    pareto_mask,
)

logger = logging.getLogger("lhas_ray.report")


@dataclass
class Figure_:
    """One rendered figure: its file stem, section, title, caption and PNG bytes."""

    name: str
    section: str
    title: str
    caption: str
    png: bytes


def png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(n, ncols))
    return -(-n // ncols), ncols


def fig_heatmaps(matrices: dict[str, np.ndarray], T: int) -> Figure_:
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
    return Figure_(
        "accuracy_matrix",
        "accuracy-matrix",
        "Accuracy matrix per selector",
        "R[i, j] = accuracy on stage j's eval set after training through stage i (row 'base' = the model before any "
        "stage), mean over seeds. The diagonal is the immediate accuracy; entries below it show retention.",
        png(fig),
    )


def fig_metrics(trajectory: pd.DataFrame, colors: dict[str, tuple]) -> Figure_:
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
    return Figure_(
        "metrics_over_stages",
        "metrics-over-stages",
        "Trajectory metrics over stages",
        "Lines: mean over seeds; bands: min to max over seeds. steps_to_threshold counts a seed whose probe never "
        "reached the threshold as probe steps + 1 (reached_threshold: the share that did). The probe metrics stop at "
        "T-1 (no probe after the last stage).",
        png(fig),
    )


def bump_columns(ranking: Ranking) -> list[tuple[str, int]]:
    """The (metric, stage) columns of the bump chart: immediate at stage 1, acc at stages 2..T, then other finals."""
    cols = [NOW]
    T = ranking.final_stage.get("acc", 1)
    cols += [("acc", t) for t in range(2, T + 1)]
    cols += [(m, ranking.final_stage[m]) for m in ("forgetting", "lca", "ood_acc") if m in ranking.final_stage]
    return cols


def end_labels(ranks: dict[str, float]) -> list[tuple[float, str]]:
    """One label per rank at a bump chart's end: the selectors that tie there share it ("kcenter, random"), in the
    order given, so tied names never print over each other. Unranked (NaN) selectors get none."""
    by_rank: dict[float, list[str]] = {}
    for sel, rank in ranks.items():
        if np.isfinite(rank):
            by_rank.setdefault(float(rank), []).append(sel)
    return [(rank, ", ".join(names)) for rank, names in sorted(by_rank.items())]


def fig_bump(ranking: Ranking, colors: dict[str, tuple]) -> Figure_:
    cols = bump_columns(ranking)
    r = ranking.ranks.set_index(["metric", "stage", "selector"])["rank"]
    fig = Figure(figsize=(max(5.0, 1.3 * len(cols) + 2.5), 0.45 * len(colors) + 2.0))
    ax = fig.subplots()
    n_acc = 1 + sum(1 for m, _ in cols if m == "acc")
    ys = {sel: [r.get((m, t, sel), np.nan) for m, t in cols] for sel in colors}
    for sel, color in colors.items():
        ax.plot(range(len(cols)), ys[sel], marker="o", color=color, lw=2, label=sel)
    for x, dx, ha in ((len(cols) - 1, 6, "left"), (0, -6, "right")):
        for rank, text in end_labels({sel: y[x] for sel, y in ys.items()}):
            ax.annotate(text, (x, rank), xytext=(dx, 0), textcoords="offset points", va="center", ha=ha, fontsize=8)
    if n_acc < len(cols):
        ax.axvline(n_acc - 0.5, color="0.6", ls=":", lw=1)
    ax.set_xticks(range(len(cols)), [f"{m}@{t}" for m, t in cols], fontsize=8, rotation=20)
    ax.set_yticks(range(1, len(colors) + 1))
    ax.set_ylim(len(colors) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = best)")
    ax.set_xlim(-1.2, len(cols) - 1 + 1.2)
    return Figure_(
        "bump_chart",
        "ranks",
        "Ranks from immediate to final",
        "Rank of each selector (mean over seeds; ties share the average rank) by immediate accuracy after stage 1, "
        "then by average accuracy over the stages seen so far after each later stage; right of the dotted line, the "
        "final ranking by other long-horizon metrics (metric@stage).",
        png(fig),
    )


def fig_pareto(ranking: Ranking, colors: dict[str, tuple]) -> Figure_ | None:
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
        front = pareto_front_of(x, y if HIGHER_IS_BETTER[m] else -y)
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
    return Figure_(
        "pareto",
        "pareto",
        "Immediate versus long-horizon",
        "Each point: a selector's mean over seeds, with 95% t-intervals of the mean (none with one seed). Red rings "
        "and the dashed line: "
        "the Pareto front (no other selector is better on both axes, each in its own direction).",
        png(fig),
    )


def fig_timings(timings: pd.DataFrame) -> Figure_:
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
    return Figure_(
        "timings",
        "timings",
        "Where the time went",
        "Left: wall seconds per trajectory (all stages), mean over seeds, by phase. Right: wall seconds per stage, "
        "mean over trajectories, by phase (stage 0: start-up and base-model evaluation).",
        png(fig),
    )


def _trial_columns(trials: pd.DataFrame) -> tuple[str | None, str | None]:
    """Guess the trial-order and objective columns of a tuning table."""
    order = next((c for c in ("trial_number", "trial", "number", "trial_id", "iteration") if c in trials), None)
    objective = next((c for c in ("objective", "value", "score", "metric_value") if c in trials), None)
    return order, objective


def best_so_far(
    objective: np.ndarray, done: np.ndarray, constrained: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The best objective among the completed trials so far (-inf before the first), and which trials are below the
    immediate floor: with a floor, a trial below it has a constrained score under its objective and is never the
    best trial, however high its objective (``tuning.results.best_trial``)."""
    from lhas_ray.tuning.scores import below_floor  # here: the report need not import Ray Train for one comparison

    y = np.asarray(objective, dtype=float)
    below = np.zeros(len(y), dtype=bool) if constrained is None else below_floor(y, np.asarray(constrained, float))
    return np.fmax.accumulate(np.where(done & ~below & np.isfinite(y), y, -np.inf)), below


def fig_trials(trials: pd.DataFrame, importances_table: pd.DataFrame | None = None) -> Figure_ | None:
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
    if importances_table is not None and len(importances_table):  # the sweep's own importances.parquet
        imp = importances_table[importances_table["objective"] == objective]
        importances = pd.Series(imp["importance"].to_numpy(), index=imp["param"].to_numpy(), dtype=float).sort_values()
        if not importances.empty:
            panels.append("importances")
    fig = Figure(figsize=(5.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    captions = []
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "trials":
            x = np.arange(1, len(t) + 1)
            floored = "constrained_objective" in t
            constrained = (
                pd.to_numeric(t["constrained_objective"], errors="coerce").to_numpy(float) if floored else None
            )
            best, below = best_so_far(y, done, constrained)
            ok = done & ~below
            ax.plot(x[ok], y[ok], "o", ms=5, color="tab:blue", label="completed")
            if (done & below).any():
                ax.plot(x[done & below], y[done & below], "x", ms=6, color="tab:orange", label="below the floor")
            if (~done).any():
                ax.plot(x[~done], y[~done], "o", ms=5, mfc="none", color="tab:gray", label="stopped or failed")
            ax.step(
                x, np.where(np.isfinite(best), best, np.nan), where="post", color="tab:red", lw=1, label="best so far"
            )
            ax.set_xlabel("trial (in order)" if order else "trial (file order)", fontsize=8)
            ax.set_ylabel(objective, fontsize=8)
            ax.legend(fontsize=7)
            ax.set_title("Objective over trials", fontsize=9)
            captions.append(
                f"Objective over trials: column {objective!r} of trials.parquet, best completed so far"
                + (
                    "; a completed trial whose immediate score is below the sweep's immediate floor (an orange "
                    "cross) is never the best, whatever its objective."
                    if floored
                    else "."
                )
            )
        elif panel == "pareto":
            xs = pd.to_numeric(t[immediate], errors="coerce").to_numpy(dtype=float)[done]
            ys = y[done]
            front = pareto_front_of(xs, ys)
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
    return Figure_("tuning", "tuning", "Tuning", " ".join(captions), png(fig))


def pareto_front_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both x and y (both maximised): ``pareto_mask`` of the pairs."""
    return pareto_mask(np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)]))


def fig_composition(shares: pd.DataFrame, colors: dict[str, tuple]) -> Figure_:
    """One panel per stage: each selector's selection as stacked shares (roles, or skills for real-data pools)."""
    stages = sorted(shares["stage"].unique())
    kinds = [k for k in ("target", "related", "unrelated") if k in set(shares["kind"])] or sorted(
        shares["kind"].unique()
    )
    flags = [k for k in ("noise", "duplicate") if k in set(shares["kind"]) and k not in kinds]
    mean = shares.groupby(["stage", "selector", "kind"])["share"].mean()
    selectors = list(colors) or sorted(shares["selector"].unique())
    fig = Figure(figsize=(min(4.0 * len(stages), 14) + 1.5, 0.28 * len(selectors) + 1.4))
    axes = fig.subplots(1, len(stages), squeeze=False, sharey=True)[0]
    palette = {"target": "#1b9e77", "related": "#7570b3", "unrelated": "#bdbdbd"}
    from matplotlib import colormaps

    others = colormaps["tab20"]
    for ax, stage in zip(axes, stages, strict=True):
        present = [s for s in selectors if (stage, s) in mean.index.droplevel("kind")]
        left = np.zeros(len(present))
        for i, kind in enumerate(kinds):
            vals = np.array([mean.get((stage, s, kind), 0.0) for s in present])
            ax.barh(present, vals, left=left, color=palette.get(kind, others(i % 20)), label=kind, height=0.7)
            left += vals
        for flag, marker in zip(flags, ("x", "+"), strict=False):
            vals = [mean.get((stage, s, flag), np.nan) for s in present]
            ax.scatter(vals, present, marker=marker, color="k", s=18, label=f"{flag} share", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_title(f"stage {stage}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.22, wspace=0.08)
    caption = (
        "Bars: share of each stage's selection by its role towards that stage's targets (built-in pools: target, "
        "related to a target, unrelated), mean over seeds; markers: the share that is noise (corrupted answers) and "
        "exact duplicates, each on its own scale 0-1."
        if flags or kinds[0] == "target"
        else "Share of each stage's selection by skill (domain), mean over seeds."
    )
    return Figure_("composition", "composition", "What each selector picked", caption, png(fig))


def fig_overlap(by_stage: dict[int, pd.DataFrame]) -> Figure_:
    """Small multiples: the Jaccard overlap of every two selectors' selections, one heatmap per stage."""
    stages = sorted(by_stage)
    n = len(next(iter(by_stage.values())))
    fig = Figure(figsize=(min(4.2 * len(stages), 14) + 0.8, 0.3 * n + 1.6))
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    im = None
    for ax, stage in zip(axes, stages, strict=True):
        J = by_stage[stage]
        im = ax.imshow(J.to_numpy(dtype=float), vmin=0, vmax=1, cmap="magma")
        ax.set_xticks(range(len(J)), J.columns, rotation=90, fontsize=6)
        ax.set_yticks(range(len(J)), J.index if ax is axes[0] else [], fontsize=6)
        ax.set_title(f"stage {stage}", fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="Jaccard |A∩B| / |A∪B|")
    caption = (
        "How much two selectors' selections share, per stage: 1 = the same examples, 0 = none in common (mean over "
        "the seeds both ran). Selectors that pick alike cannot differ much later, whatever their names."
    )
    return Figure_("overlap", "composition", "Overlap between selectors' selections", caption, png(fig))
