"""Rank analysis: tau-b against scipy, ranks and paired tests on trajectories worked out by hand, and the error rate
of the myopia claims under a planted null (and their power under a planted effect) by simulation."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from scipy import stats as sps
from scipy.stats import kendalltau

from lhas_ray.evaluation import ranking as rk
from lhas_ray.evaluation.definitions import COMPANIONS, HIGHER_IS_BETTER, LONG_HORIZON, METRICS
from lhas_ray.evaluation.ranking import (
    MIN_SEEDS_TAU_INTERVAL,
    discordant_share,
    kendall_tau_b,
    rank_analysis,
)
from lhas_ray.evaluation.ranking_table import RANKING_SCHEMA, ranking_table, write_ranking
from lhas_ray.store import ResultStore

COLUMNS = ["selector", "seed", "stage", "metric", "value"]


def _enumerated_p(d, alternative: str) -> float:
    """Exact sign-flip p-value of the sum by plain-Python enumeration of every sign pattern (seeds present only)."""
    d = [float(v) for v in d if not np.isnan(v)]
    observed, tol = sum(d), 1e-9 * sum(abs(v) for v in d)
    patterns = list(itertools.product((1.0, -1.0), repeat=len(d)))
    sums = [sum(s * v for s, v in zip(signs, d, strict=True)) for signs in patterns]
    if alternative == "greater":
        hits = sum(s >= observed - tol for s in sums)
    elif alternative == "less":
        hits = sum(s <= observed + tol for s in sums)
    else:
        hits = sum(abs(s) >= abs(observed) - tol for s in sums)
    return hits / len(patterns)


def _frame(values: dict) -> pd.DataFrame:
    """{(metric, stage): {selector: [value per seed]}} -> a trajectory table (seeds 0, 1, ...)."""
    rows = [
        (sel, seed, stage, metric, v)
        for (metric, stage), per in values.items()
        for sel, vs in per.items()
        for seed, v in enumerate(vs)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


# --- Kendall tau-b -------------------------------------------------------------------------------------------------
def test_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 12))
        x, y = rng.integers(0, 4, k).astype(float), rng.integers(0, 4, k).astype(float)
        expected = kendalltau(x, y).statistic
        got = kendall_tau_b(x, y)
        if np.isnan(expected):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_tau_b_batched_matches_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 9)), rng.normal(size=(40, 9))
    y[:, :3] = y[:, [0]]  # some ties
    got = kendall_tau_b(x, y)
    assert got.shape == (40,)
    for i in range(40):
        assert got[i] == pytest.approx(kendalltau(x[i], y[i]).statistic, abs=1e-12)


def test_tau_b_edge_cases():
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert np.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))  # constant side: undefined, like scipy
    assert np.isnan(kendall_tau_b([1, np.nan, 3], [1, 2, 3]))
    assert kendall_tau_b([np.inf, np.inf, 1.0], [3.0, 3.0, 1.0]) == pytest.approx(1.0)  # inf ties with inf


def test_discordant_share_by_hand():
    assert discordant_share([3, 2, 1], [1, 2, 3]) == pytest.approx(1.0)
    assert discordant_share([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 / 6)  # only the pair (2, 3) of 6
    assert discordant_share([1, 1, 2], [2, 1, 3]) == pytest.approx(0.0)  # a tied pair is not discordant
    assert discordant_share([1, 2], [1, 2]) == pytest.approx(0.0)
    assert np.isnan(discordant_share([1], [1]))


# --- the analysis on a two-seed trajectory worked out by hand ------------------------------------------------------
VALUES = {
    # metric, stage: {selector: [seed 0, seed 1]}
    ("immediate", 1): {"A": [0.9, 0.8], "B": [0.5, 0.5], "random": [0.6, 0.6]},
    ("immediate", 2): {"A": [0.5, 0.5], "B": [0.5, 0.5], "random": [0.5, 0.5]},  # all tied
    ("gain", 2): {"A": [0.4, 0.4], "B": [0.4, 0.4], "random": [0.2, 0.2]},  # a tie at the top
    ("acc", 1): {"A": [0.9, 0.8], "B": [0.5, 0.5], "random": [0.6, 0.6]},
    ("acc", 2): {"A": [0.3, 0.4], "B": [0.7, 0.7], "random": [0.5, 0.6]},
    ("forgetting", 2): {"A": [0.5, 0.5], "B": [0.1, 0.1], "random": [0.2, 0.2]},  # lower is better
}


def _trajectory(values=VALUES, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    t = _frame(values)
    return t[~t["selector"].isin(drop)].reset_index(drop=True)


@pytest.fixture(scope="module")
def ranking():
    return rank_analysis(_trajectory())


def _rank(r, metric, stage):
    rows = r.ranks[(r.ranks.metric == metric) & (r.ranks.stage == stage)].set_index("selector")
    return rows["rank"].to_dict(), rows["mean"].to_dict()


def test_ranks_direction_and_ties(ranking):
    ranks, means = _rank(ranking, "immediate", 1)
    assert ranks == {"A": 1.0, "random": 2.0, "B": 3.0}
    assert means == pytest.approx({"A": 0.85, "B": 0.5, "random": 0.6})
    assert _rank(ranking, "acc", 2)[0] == {"B": 1.0, "random": 2.0, "A": 3.0}
    assert _rank(ranking, "forgetting", 2)[0] == {"B": 1.0, "random": 2.0, "A": 3.0}  # lower forgetting ranks first
    assert _rank(ranking, "gain", 2)[0] == {"A": 1.5, "B": 1.5, "random": 3.0}  # ties share the average rank
    assert _rank(ranking, "immediate", 2)[0] == {"A": 2.0, "B": 2.0, "random": 2.0}
    assert ranking.final_stage == {"immediate": 2, "gain": 2, "acc": 2, "forgetting": 2}


def test_rank_board_intervals_by_hand(ranking):
    row = ranking.ranks.set_index(["metric", "stage", "selector"]).loc[("acc", 2, "random")]
    # seeds {0.5, 0.6}: mean 0.55, sd 0.0707, sem 0.05, t(0.975, 1 df) * sem either side
    half = sps.t.ppf(0.975, 1) * 0.05
    assert row["mean"] == pytest.approx(0.55)
    assert row["std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert (row["lo"], row["hi"]) == pytest.approx((0.55 - half, 0.55 + half))
    assert row["n_seeds"] == 2
    f = ranking.ranks.set_index(["metric", "stage", "selector"]).loc[("forgetting", 2, "A")]
    assert (f["mean"], f["lo"], f["hi"]) == pytest.approx((0.5, 0.5, 0.5))  # constant over seeds, lower is better


def test_reversal(ranking):
    tau = ranking.tau.set_index("metric")
    assert set(tau.index) == {"acc", "forgetting"}  # only long-horizon metrics are compared with the immediate one
    assert tau.loc["acc", "tau_b"] == pytest.approx(-1.0)
    assert tau.loc["acc", "discordant"] == pytest.approx(1.0)
    assert tau.loc["forgetting", "tau_b"] == pytest.approx(-1.0)
    assert tau.loc["acc", "seed_tau"] == pytest.approx(-1.0)  # both seeds reverse fully
    assert tau.loc["acc", "n_seeds"] == 2
    assert tau.loc["acc", "p_raw"] == pytest.approx(2 / 4)  # two-sided with 2 seeds: {-1, -1} is 2 of 4 patterns
    assert np.isnan(tau.loc["acc", "seed_tau_lo"])  # fewer than MIN_SEEDS_TAU_INTERVAL seeds: no interval


def test_differences_by_hand(ranking):
    d = ranking.differences.set_index(["selector", "metric", "stage"])
    a = d.loc[("A", "immediate", 1)]  # immediate at stage 1 is tested beside every final stage
    assert a["diff"] == pytest.approx(0.25) and a["n_seeds"] == 2
    assert a["p_raw"] == pytest.approx(2 / 4)  # {0.3, 0.2}: only ++ and -- reach |sum| 0.5
    f = d.loc[("A", "forgetting", 2)]
    assert f["diff"] == pytest.approx(-0.3)  # oriented: -(0.5 - 0.2)
    assert set(ranking.differences["baseline"]) == {"random"}
    assert "random" not in set(ranking.differences["selector"])
    assert ranking.families["difference"] == len(ranking.differences) == 2 * 5  # 2 selectors x 5 targets


def test_myopia_by_hand_two_seeds(ranking):
    my = ranking.myopia.set_index(["selector", "metric"])
    a = my.loc[("A", "acc")]
    assert a["now_diff"] == pytest.approx(0.25)  # ((0.9-0.6) + (0.8-0.6))/2
    assert a["later_diff"] == pytest.approx(-0.2)  # ((0.3-0.5) + (0.4-0.6))/2
    lo, hi = sps.t.interval(0.95, 1, loc=0.25, scale=sps.sem([0.3, 0.2]))
    assert (a["now_lo"], a["now_hi"]) == pytest.approx((lo, hi))
    assert a["p_now"] == pytest.approx(1 / 4) and a["p_later"] == pytest.approx(1 / 4)  # 2 seeds: 1/2^2 at best
    assert a["p_raw"] == pytest.approx(1 / 4)
    assert a["point_myopic"] and not a["myopic"]  # 1/4 can never be below 0.05
    f = my.loc[("A", "forgetting")]
    assert f["later_diff"] == pytest.approx(-0.3)  # oriented: -(0.5 - 0.2)
    b = my.loc[("B", "acc")]
    assert b["now_diff"] == pytest.approx(-0.1) and b["later_diff"] == pytest.approx(0.15)
    assert not b["point_myopic"] and not b["myopic"]
    assert "random" not in set(ranking.myopia["selector"])
    assert ranking.families["myopia"] == 4 and not ranking.attainable("myopia")


def test_no_random_selector_is_said_not_failed():
    r = rank_analysis(_trajectory(drop=("random",)))
    assert r.myopia.empty and r.differences.empty
    assert any("no 'random' selector" in note for note in r.notes)
    table = ranking_table(r)
    notes = table.filter(pc.equal(table.column("kind"), "note")).column("note").to_pylist()
    assert any("no 'random' selector" in note for note in notes)
    assert r.tau.set_index("metric").loc["acc", "tau_b"] == pytest.approx(-1.0)  # A and B still reverse


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        rank_analysis(_trajectory().iloc[:0])
    with pytest.raises(ValueError, match="alpha"):
        rank_analysis(_trajectory(), alpha=1.5)
    with pytest.raises(ValueError, match="level"):
        rank_analysis(_trajectory(), level=0.0)


def test_ranking_parquet_round_trip(tmp_path, ranking):
    store = ResultStore(str(tmp_path))
    write_ranking(store, ranking)
    table = store.read_parquet("ranking.parquet")
    assert table.schema.equals(RANKING_SCHEMA)
    df = table.to_pandas()
    assert set(df["kind"]) == {"rank", "tau", "difference", "myopia", "family"}
    tau = df[(df.kind == "tau") & (df.metric == "acc") & (df.statistic == "tau_b_of_means")]
    assert tau["value"].iloc[0] == pytest.approx(-1.0)
    key = (df.kind == "myopia") & (df.selector == "A") & (df.metric == "acc")
    assert df[key & (df.statistic == "myopic")]["value"].iloc[0] == 0.0
    assert df[key & (df.statistic == "p_value_raw")]["value"].iloc[0] == pytest.approx(1 / 4)
    fam = df[df.kind == "family"].set_index("metric")["value"].to_dict()
    assert fam == {"myopia": 4.0, "difference": 10.0, "reversal": 2.0}


# --- one seed is descriptive ---------------------------------------------------------------------------------------
def test_one_seed_is_descriptive():
    traj = _trajectory()
    r = rank_analysis(traj[traj["seed"] == 0])
    assert r.descriptive and r.seeds == [0]
    assert any("1 seed" in note for note in r.notes)
    assert not r.myopia.empty and r.myopia["point_myopic"].any()  # A is better now and worse later on seed 0
    intervals = {
        "ranks": ["lo", "hi", "std"],
        "tau": ["seed_tau_lo", "seed_tau_hi", "p_raw", "p_holm"],
        "differences": ["lo", "hi", "p_raw", "p_holm"],
        "myopia": ["now_lo", "now_hi", "later_lo", "later_hi", "p_now", "p_later", "p_raw", "p_holm"],
    }
    for frame, cols in intervals.items():
        df = getattr(r, frame)
        assert len(df), frame
        for c in cols:
            assert df[c].isna().all(), (frame, c)
    assert not r.myopia["myopic"].any()
    assert r.families == {} and not r.attainable("myopia")
    table = ranking_table(r)
    df = table.to_pandas()
    assert table.column("lo").null_count == table.column("hi").null_count == len(df)  # no interval anywhere
    p_rows = df[df["statistic"].str.startswith("p_value")]
    assert len(p_rows) and p_rows["value"].isna().all()  # p rows are kept, with no value
    assert (df["kind"] != "family").all()
    assert (df[df["statistic"] == "myopic"]["value"] == 0.0).all()
    for note in df["note"].dropna():
        for word in ("confident", "surely", "holds", "reverses"):
            assert word not in note.lower(), note
    assert "point estimates only (one seed: not tested)" in set(df["note"])


# --- myopia worked out by hand: 5 seeds cannot reach significance, 10 seeds can --------------------------------------
def _myopia_trajectory(n_seeds: int) -> pd.DataFrame:
    """A better than random now on every seed and worse later on every seed; B better now and better later."""
    k = np.arange(n_seeds)
    up = 0.1 + 0.1 * (k % 3)  # 0.1, 0.2, 0.3, 0.1, ... : every one > 0
    down = 0.1 + 0.05 * (k % 4)
    values = {
        ("immediate", 1): {"A": 0.5 + up, "B": 0.5 + down, "random": np.full(n_seeds, 0.5)},
        ("acc", 2): {"A": 0.6 - down, "B": 0.6 + up, "random": np.full(n_seeds, 0.6)},
        ("forgetting", 2): {"A": 0.2 + up, "B": 0.2 - down / 2, "random": np.full(n_seeds, 0.2)},  # lower is better
    }
    return _frame(values)


def test_myopia_by_hand_five_seeds_not_attainable():
    r = rank_analysis(_myopia_trajectory(5))
    my = r.myopia.set_index(["selector", "metric"])
    m = 2 * 2  # selectors A and B x long-horizon metrics acc and forgetting
    assert r.families["myopia"] == len(r.myopia) == m
    for metric in ("acc", "forgetting"):
        a = my.loc[("A", metric)]
        assert a["p_now"] == 1 / 32 and a["p_later"] == 1 / 32 and a["p_raw"] == 1 / 32  # 1 of 2^5 patterns
        assert a["p_holm"] == min(1.0, m / 32)  # both of A's claims tie at the smallest p: m * p for each
        assert a["point_myopic"] and not a["myopic"]  # 4/32 = 0.125 > 0.05
        assert a["n_seeds"] == 5
    a = my.loc[("A", "acc")]
    assert a["now_diff"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.1, 0.2]))
    assert a["later_diff"] == pytest.approx(-np.mean([0.1, 0.15, 0.2, 0.25, 0.1]))
    assert my.loc[("A", "forgetting"), "later_diff"] == pytest.approx(-np.mean([0.1, 0.2, 0.3, 0.1, 0.2]))
    for metric in ("acc", "forgetting"):
        b = my.loc[("B", metric)]  # better now and better later: "worse later" has p = 1 (every pattern is <= it)
        assert b["p_now"] == 1 / 32 and b["p_later"] == 1.0 and b["p_raw"] == 1.0 and b["p_holm"] == 1.0
        assert not b["point_myopic"] and not b["myopic"]
    assert not r.attainable("myopia")  # 1/32 > 0.05 / 4
    # at alpha = 4/32 exactly the Holm p of A's claims equals alpha: the strict rule makes no claim, and attainable
    # agrees that none can be made
    edge = rank_analysis(_myopia_trajectory(5), alpha=m / 32)
    assert edge.myopia["p_holm"].min() == edge.alpha and not edge.myopia["myopic"].any()
    assert not edge.attainable("myopia")
    above = rank_analysis(_myopia_trajectory(5), alpha=m / 32 + 1e-9)
    assert above.attainable("myopia") and above.myopia["myopic"].sum() == 2  # A on acc and on forgetting
    diff = r.differences.set_index(["selector", "metric", "stage"])
    assert diff.loc[("A", "immediate", 1), "p_raw"] == 2 / 32  # two-sided: all + and all -


def test_myopia_by_hand_ten_seeds_significant():
    r = rank_analysis(_myopia_trajectory(10), myopia_metrics=["acc"])
    my = r.myopia.set_index(["selector", "metric"])
    assert r.families["myopia"] == len(r.myopia) == 2  # A and B, acc only
    a = my.loc[("A", "acc")]
    assert a["p_now"] == 1 / 1024 and a["p_later"] == 1 / 1024 and a["p_raw"] == 1 / 1024
    assert a["p_holm"] == 2 / 1024
    assert a["myopic"]
    b = my.loc[("B", "acc")]
    assert not b["myopic"] and not b["point_myopic"] and b["p_holm"] == 1.0
    assert r.attainable("myopia")
    verdict = ranking_table(r).to_pandas()
    row = verdict[(verdict.kind == "myopia") & (verdict.selector == "A") & (verdict.statistic == "myopic")]
    assert row["value"].item() == 1.0 and row["note"].item().startswith("myopic")
    # with the whole long-horizon family (acc and forgetting: m = 4) 4/1024 is still below 0.05
    full = rank_analysis(_myopia_trajectory(10)).myopia.set_index(["selector", "metric"])
    assert full.loc[("A", "acc"), "p_holm"] == 4 / 1024 and full.loc[("A", "acc"), "myopic"]
    assert not full.loc[("B", "acc"), "myopic"] and not full.loc[("B", "forgetting"), "myopic"]


# --- rank agreement: per-seed tau-b against scipy ------------------------------------------------------------------
def _random_trajectory(n_seeds: int, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sels = ["a", "b", "c", "d", "e", "random"]
    values = {
        # eighths: ties are common, and sums of eighths are exact in floating point, so a tie among the means
        # over seeds is a tie whatever the order of summation
        (m, stage): {s: rng.integers(0, 8, n_seeds) / 8 for s in sels}
        for m, stage in (("immediate", 1), ("acc", 2), ("forgetting", 2))
    }
    return _frame(values)


def _per_seed_tau(traj: pd.DataFrame, metric: str, stage: int) -> np.ndarray:
    """scipy's tau-b, seed by seed, between immediate@1 and metric@stage oriented so that higher is better."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    out = []
    for _, g in traj.groupby("seed"):
        now = g[(g.metric == "immediate") & (g.stage == 1)].set_index("selector")["value"].sort_index()
        later = g[(g.metric == metric) & (g.stage == stage)].set_index("selector")["value"].sort_index()
        out.append(kendalltau(now.to_numpy(), sign * later.to_numpy()).statistic)
    return np.array(out)


@pytest.mark.parametrize("n_seeds", [1, 4, MIN_SEEDS_TAU_INTERVAL, 7])
def test_rank_agreement_against_scipy(n_seeds):
    traj = _random_trajectory(n_seeds)
    r = rank_analysis(traj)
    tau = r.tau.set_index("metric")
    assert set(tau.index) == {"acc", "forgetting"}
    cube = rk.build_cube(traj)
    p_raw = {}
    for metric in ("acc", "forgetting"):
        per_seed = _per_seed_tau(traj, metric, 2)
        got = kendall_tau_b(cube.at("immediate", 1).T, cube.at(metric, 2).T)
        assert got == pytest.approx(per_seed, abs=1e-12)  # the module's per-seed tau-b is scipy's
        row = tau.loc[metric]
        assert row["seed_tau"] == pytest.approx(per_seed.mean(), abs=1e-12)
        assert row["n_seeds"] == n_seeds
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        means = traj.groupby(["metric", "selector"])["value"].mean()
        assert row["tau_b"] == pytest.approx(
            kendalltau(means["immediate"].sort_index(), sign * means[metric].sort_index()).statistic, abs=1e-12
        )
        if n_seeds >= MIN_SEEDS_TAU_INTERVAL:
            lo, hi = sps.t.interval(0.95, n_seeds - 1, loc=per_seed.mean(), scale=sps.sem(per_seed))
            assert (row["seed_tau_lo"], row["seed_tau_hi"]) == pytest.approx((lo, hi), abs=1e-12)
        else:
            assert np.isnan(row["seed_tau_lo"]) and np.isnan(row["seed_tau_hi"])
        if n_seeds >= 2:
            p_raw[metric] = _enumerated_p(per_seed, "two-sided")
            assert row["p_raw"] == pytest.approx(p_raw[metric], abs=1e-12)
        else:
            assert np.isnan(row["p_raw"]) and np.isnan(row["p_holm"])
    if p_raw:  # Holm over the family of two: the smaller p doubled, the larger one at least that, capped at 1
        lo_m, hi_m = sorted(p_raw, key=p_raw.get)
        assert tau.loc[lo_m, "p_holm"] == pytest.approx(min(1.0, 2 * p_raw[lo_m]))
        assert tau.loc[hi_m, "p_holm"] == pytest.approx(min(1.0, max(2 * p_raw[lo_m], p_raw[hi_m])))
        assert r.families["reversal"] == 2


# --- censored values rank like any number; inf is refused ---------------------------------------------------------
def test_censored_steps_rank_and_pair_like_any_number():
    cap = 20 + 1  # probe steps 0..20: a seed that never reaches the threshold is censored at 21
    values = {
        ("immediate", 1): {"A": [0.6, 0.7, 0.6, 0.7, 0.6], "random": [0.5] * 5},
        ("steps_to_threshold", 1): {"A": [5, cap, 4, 6, cap], "random": [cap, cap, 10, cap, 12]},
        ("reached_threshold", 1): {"A": [1, 0, 1, 1, 0], "random": [0, 0, 1, 0, 1]},
        ("acc", 2): {"A": [0.5] * 5, "random": [0.5] * 5},
    }
    r = rank_analysis(_frame(values))
    ranks = r.ranks.set_index(["metric", "stage", "selector"])
    assert ranks.loc[("steps_to_threshold", 1, "A"), "mean"] == pytest.approx((5 + cap + 4 + 6 + cap) / 5)
    assert ranks.loc[("steps_to_threshold", 1, "random"), "mean"] == pytest.approx((3 * cap + 22) / 5)
    assert ranks.loc[("steps_to_threshold", 1, "A"), "n_seeds"] == 5
    assert ranks.loc[("steps_to_threshold", 1, "A"), "rank"] == 1.0  # fewer steps is better
    d = r.differences.set_index(["selector", "metric", "stage"]).loc[("A", "steps_to_threshold", 1)]
    oriented = [-(5 - cap), -(cap - cap), -(4 - 10), -(6 - cap), -(cap - 12)]  # + = fewer steps than random
    assert oriented == [16, 0, 6, 15, -9]
    assert d["n_seeds"] == 5  # the censored seeds are paired, not dropped
    assert d["diff"] == pytest.approx(np.mean(oriented))
    assert d["p_raw"] == pytest.approx(_enumerated_p(oriented, "two-sided"), abs=1e-12)
    claim = r.myopia.set_index(["selector", "metric"]).loc[("A", "steps_to_threshold")]
    assert claim["n_seeds"] == 5 and claim["later_diff"] == pytest.approx(np.mean(oriented))
    assert claim["p_later"] == pytest.approx(_enumerated_p(oriented, "less"), abs=1e-12)
    # the companion is ranked but never tested on its own
    assert "reached_threshold" in set(r.ranks["metric"])
    assert "reached_threshold" not in set(r.differences["metric"]) | set(r.myopia["metric"]) | set(r.tau["metric"])


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_in_trajectory_is_refused(bad):
    traj = _trajectory()
    traj.loc[3, "value"] = bad
    with pytest.raises(ValueError, match="inf"):
        rank_analysis(traj)


def test_claim_without_paired_seeds_is_untested():
    """A's acc and random's acc share no seed: the myopia claim cannot be tested, so it is no Holm family member
    (the larger of p_now and a NaN p_later is NaN, not p_now) and the family sizes count tested claims only."""
    values = {
        ("immediate", 1): {"A": [0.9, 0.8, 0.7], "B": [0.6, 0.6, 0.6], "random": [0.5, 0.5, 0.5]},
        ("acc", 2): {"A": [0.3, 0.3, np.nan], "B": [0.3, 0.3, 0.3], "random": [np.nan, np.nan, 0.5]},
    }
    traj = _frame(values).dropna()
    r = rank_analysis(traj)
    my = r.myopia.set_index("selector")
    assert my.loc["A", "n_seeds"] == 0 and my.loc["A", "p_now"] == 1 / 8 and np.isnan(my.loc["A", "p_later"])
    assert np.isnan(my.loc["A", "p_raw"]) and np.isnan(my.loc["A", "p_holm"]) and not my.loc["A", "myopic"]
    # B: one paired seed (seed 2), 0.3 - 0.5 < 0: "worse later" has p 1/2; the family has one member, B
    assert my.loc["B", "p_later"] == 1 / 2 and my.loc["B", "p_raw"] == 1 / 2 and my.loc["B", "p_holm"] == 1 / 2
    assert r.families == {"myopia": 1, "difference": 3, "reversal": 0}  # A's acc difference is untested too


# --- simulation: error rate of the myopia claims under a planted null, power under a planted effect -----------------
# the built-in long-horizon metrics (lm_eval_* exist only with evaluation.lm_eval; tests/test_lm_eval.py has them)
LATER = [m for m in LONG_HORIZON if m not in COMPANIONS and not m.startswith("lm_eval_")]
SIM_METRICS = [m for m in METRICS if m == "immediate" or m in LATER]  # immediate first
SIM_SELECTORS = ["random"] + [f"sel{i:02d}" for i in range(11)]  # already in the sorted order _cube uses
PLANTED = "sel00"
ALPHA = 0.05
NULL_REPS = 1000
# 0.05 + 3 standard errors of a binomial share at 0.05 over 1,000 repetitions
NULL_BOUND = ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / NULL_REPS)


def _simulate(rng, n_seeds: int, reps: int, metrics: list[str], delta: float = 0.0) -> np.ndarray:
    """Raw V[rep, metric, stage, selector, seed]: immediate at stage 1, the others at stage 2.

    Each value is the seed's shared effect for that metric (the same for every selector) plus iid N(0, 1) noise.
    ``delta``: PLANTED is better than the rest by delta now and worse by delta later, in each metric's direction.
    """
    assert metrics[0] == "immediate"
    M, S = len(metrics), len(SIM_SELECTORS)
    vals = rng.normal(size=(reps, M, 1, n_seeds)) + rng.normal(size=(reps, M, S, n_seeds))
    if delta:
        sign = np.array([1.0 if HIGHER_IS_BETTER[m] else -1.0 for m in metrics])
        p = SIM_SELECTORS.index(PLANTED)
        vals[:, 0, p] += delta
        vals[:, 1:, p] -= delta * sign[1:, None]
    V = np.full((reps, M, 3, S, n_seeds), np.nan)
    V[:, 0, 1] = vals[:, 0]
    V[:, 1:, 2] = vals[:, 1:]
    return V


def _table(V: np.ndarray, metrics: list[str]) -> pd.DataFrame:
    """One repetition's raw V[metric, stage, selector, seed] as a trajectory table."""
    mi, st, si, ri = np.nonzero(~np.isnan(V))
    return pd.DataFrame(
        {
            "selector": np.array(SIM_SELECTORS)[si],
            "seed": ri.astype(np.int64),
            "stage": st.astype(np.int64),
            "metric": np.array(metrics)[mi],
            "value": V[mi, st, si, ri],
        }
    )


class _Sim:
    """rank_analysis's myopia decision on synthetic cubes: ranking._Cube + ranking.baseline_tests, as it calls them."""

    def __init__(self, n_seeds: int, metrics: list[str], myopia_metrics: list[str] | None):
        self.metrics, self.myopia_metrics = metrics, myopia_metrics
        self.sign = np.array([1.0 if HIGHER_IS_BETTER[m] else -1.0 for m in metrics])
        self.seeds = list(range(n_seeds))
        probe = _table(_simulate(np.random.default_rng(0), n_seeds, 1, metrics)[0], metrics)
        self.final = rk.final_stages(probe)
        assert self.final == {m: 1 if m == "immediate" else 2 for m in metrics}

    def cube(self, V: np.ndarray) -> rk.Cube:
        return rk.Cube(V * self.sign[:, None, None, None], self.metrics, SIM_SELECTORS, self.seeds, self.sign)

    def myopia(self, V: np.ndarray) -> pd.DataFrame:
        _, my = rk.baseline_tests(
            self.cube(V), self.final, ["random"], alpha=ALPHA, level=0.95, myopia_metrics=self.myopia_metrics
        )
        return my

    def check_against_rank_analysis(self, V: np.ndarray) -> pd.DataFrame:
        """The shortcut builds the cube rank_analysis builds and reaches the same myopia table."""
        traj = _table(V, self.metrics)
        assert np.array_equal(rk.build_cube(traj).V, self.cube(V).V, equal_nan=True)
        full = rank_analysis(traj, alpha=ALPHA, myopia_metrics=self.myopia_metrics)
        mine = self.myopia(V)
        pd.testing.assert_frame_equal(full.myopia, mine)
        assert full.families["myopia"] == len(mine)
        return mine


@pytest.mark.slow
def test_null_simulation_myopia_error_rate():
    """Planted null: no selector differs from any other. The share of repetitions with ANY myopic claim (family of
    11 selectors x 11 long-horizon metrics = 121 claims, Holm at 0.05) must stay within 0.05 + 3 binomial SE."""
    assert len(LATER) == 11 and len(SIM_SELECTORS) == 12
    rng = np.random.default_rng(20240617)
    rates, started, cpu = {}, time.perf_counter(), time.process_time()
    configs = [(3, SIM_METRICS, None), (5, SIM_METRICS, None), (10, SIM_METRICS, None)]
    # also the small family (11 claims, acc only) at 10 seeds, where a false claim is arithmetically reachable
    configs.append((10, ["immediate", "acc"], ["acc"]))
    for n_seeds, metrics, myopia_metrics in configs:
        sim = _Sim(n_seeds, metrics, myopia_metrics)
        V = _simulate(rng, n_seeds, NULL_REPS, metrics)
        for k in range(2):
            sim.check_against_rank_analysis(V[k])
        tables = [sim.myopia(V[k]) for k in range(NULL_REPS)]
        any_claim = np.array([my["myopic"].any() for my in tables])
        m = len(tables[0])
        assert m == 11 * (len(metrics) - 1)
        rates[(n_seeds, m)] = any_claim.mean()
        assert any_claim.mean() <= NULL_BOUND, (n_seeds, m, any_claim.mean())
        if m / 2**n_seeds >= ALPHA:  # no Holm-adjusted p can fall below alpha: not one claim, ever
            assert not any_claim.any()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"\nnull simulation ({NULL_REPS} repetitions each, bound {NULL_BOUND:.4f}), {wall:.1f} s ({cpu:.1f} s CPU):")
    for (n_seeds, m), rate in rates.items():
        print(f"  seeds {n_seeds:2d}  family {m:3d}  share with any myopic claim {rate:.3f}")


DELTA = 6.0  # the planted effect, in units of the per-selector noise sd


def test_power_simulation_planted_myopia():
    """Planted effect: PLANTED is better than random now and worse later by DELTA (noise sd 1, so a paired difference
    is N(DELTA, 2)). Printed: the share of repetitions in which PLANTED is called myopic on acc.

    What must hold: with n seeds every p-value is >= 1/2^n, so a family of m claims has every Holm-adjusted p >=
    m/2^n; when m/2^n >= alpha the power is exactly 0. Otherwise, whenever all 2n paired differences (n now, n later)
    have the planted sign, PLANTED's p_now = p_later = 1/2^n exactly, it is the family's smallest p, and its Holm
    p is m/2^n < alpha: it is called myopic. A difference has the wrong sign with probability Phi(-DELTA/sqrt(2)) =
    1.1e-5, so the power is at least 1 - 2n * 1.1e-5 > 0.999; 0.99 leaves room for the repetitions' sampling."""
    rng = np.random.default_rng(7)
    wrong = sps.norm.cdf(-DELTA / np.sqrt(2))
    rows, started, cpu = [], time.perf_counter(), time.process_time()
    # acc-only family (m = 11) on a cube of immediate and acc, which is all its claims read; the whole family
    # (m = 121) on the full cube, with fewer repetitions at 16 seeds (65,536 patterns per test)
    # (powers of exactly 0 are forced by the arithmetic whatever the data: fewer repetitions suffice there)
    configs = [(n, ["immediate", "acc"], ["acc"], 100 if n == 10 else 50) for n in (3, 5, 10, 16)]
    configs += [(n, SIM_METRICS, None, 20 if n < 16 else 5) for n in (3, 5, 10, 16)]
    for n_seeds, metrics, myopia_metrics, reps in configs:
        sim = _Sim(n_seeds, metrics, myopia_metrics)
        V = _simulate(rng, n_seeds, reps, metrics, delta=DELTA)
        t0 = time.perf_counter()
        first = sim.check_against_rank_analysis(V[0]) if n_seeds <= 10 else sim.myopia(V[0])
        hits, other = [], []
        for k in range(reps):
            my = first if k == 0 else sim.myopia(V[k])
            mine = my[(my["selector"] == PLANTED) & (my["metric"] == "acc")]
            hits.append(bool(mine["myopic"].item()))
            other.append(bool(my[my["selector"] != PLANTED]["myopic"].any()))
        m = len(first)
        power = float(np.mean(hits))
        rows.append((n_seeds, m, reps, power, float(np.mean(other)), time.perf_counter() - t0))
        if m / 2**n_seeds >= ALPHA:
            assert power == 0.0
        else:
            assert 1 - 2 * n_seeds * wrong > 0.999
            assert power >= 0.99, (n_seeds, m, power)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"\npower of the myopia claim (planted effect {DELTA:g} noise sd), {wall:.1f} s ({cpu:.1f} s CPU):")
    print("  seeds  family  reps  m/2^n   power  share with a false claim  seconds")
    for n_seeds, m, reps, power, other, secs in rows:
        print(f"  {n_seeds:5d}  {m:6d}  {reps:4d}  {m / 2**n_seeds:6.4f}  {power:5.3f}  {other:24.3f}  {secs:7.1f}")
