"""Rank analysis: tau-b against scipy, discordant pairs and myopia on trajectories worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from scipy.stats import kendalltau

from lhas_ray.evaluation.ranking import (
    RANKING_SCHEMA,
    discordant_share,
    kendall_tau_b,
    rank_analysis,
    ranking_table,
    write_ranking,
)
from lhas_ray.store import ResultStore


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


# --- the analysis on a trajectory worked out by hand ---------------------------------------------------------------
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
    rows = [
        (sel, seed, stage, metric, v)
        for (metric, stage), per in values.items()
        for sel, vs in per.items()
        if sel not in drop
        for seed, v in enumerate(vs)
    ]
    return pd.DataFrame(rows, columns=["selector", "seed", "stage", "metric", "value"])


@pytest.fixture(scope="module")
def ranking():
    return rank_analysis(_trajectory(), n_boot=2000, seed=0)


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


def test_p_best_splits_ties(ranking):
    p = ranking.ranks.set_index(["metric", "stage", "selector"])["p_best"]
    assert p[("immediate", 1, "A")] == pytest.approx(1.0)
    assert p[("gain", 2, "A")] == pytest.approx(0.5) and p[("gain", 2, "B")] == pytest.approx(0.5)


def test_reversal(ranking):
    tau = ranking.tau.set_index("metric")
    assert tau.loc["acc", "tau_b"] == pytest.approx(-1.0)
    assert tau.loc["acc", "discordant"] == pytest.approx(1.0)
    assert tau.loc["forgetting", "tau_b"] == pytest.approx(-1.0)
    assert tau.loc["gain", "tau_b"] == pytest.approx(kendalltau([0.85, 0.5, 0.6], [0.4, 0.4, 0.2]).statistic)
    assert np.isnan(tau.loc["immediate", "tau_b"])  # every selector tied at stage 2: undefined
    # every bootstrap resample keeps the full reversal (the per-seed orderings never change)
    assert (tau.loc["acc", "tau_lo"], tau.loc["acc", "tau_hi"]) == pytest.approx((-1.0, -1.0))


def test_myopia_by_hand(ranking):
    my = ranking.myopia.set_index(["selector", "metric"])
    a = my.loc[("A", "acc")]
    assert a["now_diff"] == pytest.approx(0.25)  # ((0.9-0.6) + (0.8-0.6))/2
    assert a["later_diff"] == pytest.approx(-0.2)  # ((0.3-0.5) + (0.4-0.6))/2
    assert (a["now_lo"], a["now_hi"]) == pytest.approx((0.2, 0.3))  # resample means of {0.3, 0.2}
    assert a["myopic"] and a["confident"] and a["p_myopic"] == pytest.approx(1.0)
    assert a["verdict"].startswith("myopic")
    f = my.loc[("A", "forgetting")]
    assert f["later_diff"] == pytest.approx(-0.3)  # oriented: -(0.5 - 0.2)
    assert f["confident"]
    b = my.loc[("B", "acc")]
    assert b["now_diff"] == pytest.approx(-0.1) and b["later_diff"] == pytest.approx(0.15)
    assert not b["myopic"] and b["p_myopic"] == 0.0
    assert "random" not in set(ranking.myopia["selector"])


def test_no_random_selector_is_said_not_failed():
    r = rank_analysis(_trajectory(drop=("random",)), n_boot=50)
    assert r.myopia.empty
    assert any("no 'random' selector" in note for note in r.notes)
    table = ranking_table(r)
    notes = table.filter(pc.equal(table.column("kind"), "note")).column("note").to_pylist()
    assert any("no 'random' selector" in note for note in notes)
    assert r.tau.set_index("metric").loc["acc", "tau_b"] == pytest.approx(-1.0)  # A and B still reverse


def test_bootstrap_is_seeded_and_brackets_the_point():
    rng = np.random.default_rng(5)
    rows = [
        (s, seed, t, m, float(rng.random()))
        for s in ("a", "b", "c", "random")
        for seed in range(5)
        for t in (1, 2)
        for m in ("immediate", "acc")
    ]
    traj = pd.DataFrame(rows, columns=["selector", "seed", "stage", "metric", "value"])
    r1, r2 = rank_analysis(traj, n_boot=300, seed=3), rank_analysis(traj, n_boot=300, seed=3)
    pd.testing.assert_frame_equal(r1.tau, r2.tau)
    pd.testing.assert_frame_equal(r1.myopia, r2.myopia)
    assert ((r1.ranks["lo"] <= r1.ranks["mean"] + 1e-12) & (r1.ranks["mean"] <= r1.ranks["hi"] + 1e-12)).all()
    r3 = rank_analysis(traj, n_boot=300, seed=4)
    assert not r1.myopia["now_lo"].equals(r3.myopia["now_lo"])


def test_single_seed_notes_degenerate_interval():
    traj = _trajectory()
    r = rank_analysis(traj[traj["seed"] == 0], n_boot=20)
    assert any("1 seed" in note for note in r.notes)


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        rank_analysis(_trajectory().iloc[:0])
    with pytest.raises(ValueError, match="ci"):
        rank_analysis(_trajectory(), ci=1.5)


def test_ranking_parquet_round_trip(tmp_path, ranking):
    store = ResultStore(str(tmp_path))
    write_ranking(store, ranking)
    table = store.read_parquet("ranking.parquet")
    assert table.schema.equals(RANKING_SCHEMA)
    df = table.to_pandas()
    assert set(df["kind"]) == {"rank", "tau", "myopia"}
    tau = df[(df.kind == "tau") & (df.metric == "acc") & (df.statistic == "tau_b")]
    assert tau["value"].iloc[0] == pytest.approx(-1.0)
    myopic = df[(df.kind == "myopia") & (df.selector == "A") & (df.metric == "acc") & (df.statistic == "myopic")]
    assert myopic["value"].iloc[0] == 1.0
