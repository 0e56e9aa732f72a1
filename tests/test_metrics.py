"""Trajectory metrics against accuracy matrices worked out by hand (values in the comments are the hand arithmetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lhas_ray.evaluation.definitions import (
    DEFINITIONS,
    FORGETTING_TEXT,
    HIGHER_IS_BETTER,
    MATRIX_METRICS,
    METRICS,
    definitions,
)
from lhas_ray.evaluation.metrics import (
    imbalance,
    matrix_metrics,
    missing_units,
    probe_metrics,
    read_long_tables,
    trajectory_metrics,
    untargeted_skills,
)
from lhas_ray.evaluation.ranking import rank_analysis

try:
    from synthetic_run import METRICS_SCHEMA, build_synthetic_run, long_metrics_from_matrix
except ImportError:  # tests/ is a package
    from tests.synthetic_run import METRICS_SCHEMA, build_synthetic_run, long_metrics_from_matrix

n = np.nan


def _R(rows: list[list[float]]) -> np.ndarray:
    """A hand-written matrix with columns 1..T; column 0 (unused) is added as NaN."""
    return np.array([[n, *r] for r in rows], dtype=float)


def _at(out: dict[str, np.ndarray], metric: str) -> list[float]:
    return out[metric][1:].tolist()


def _traj_value(traj: pd.DataFrame, metric: str, stage: int) -> float:
    rows = traj[(traj["metric"] == metric) & (traj["stage"] == stage)]
    assert len(rows) == 1, (metric, stage, rows)
    return float(rows["value"].iloc[0])


def _metrics_df(R: np.ndarray, selector: str = "s", seed: int = 0) -> pd.DataFrame:
    return long_metrics_from_matrix(R, selector, seed).to_pandas()


# --- T = 1 ---------------------------------------------------------------------------------------------------------
def test_one_stage():
    out = matrix_metrics(_R([[0.2], [0.6]]))
    assert _at(out, "immediate") == pytest.approx([0.6])
    assert _at(out, "gain") == pytest.approx([0.4])  # 0.6 - 0.2
    assert _at(out, "acc") == pytest.approx([0.6])
    for m in ("forgetting", "bwt", "fwt"):  # undefined with no earlier stage
        assert np.isnan(out[m][1])
    traj = trajectory_metrics(_metrics_df(_R([[0.2], [0.6]])))
    assert set(traj["metric"]) == {"immediate", "gain", "acc"}  # undefined metrics are omitted, not NaN rows
    assert traj["value"].notna().all()


# --- T = 2 ---------------------------------------------------------------------------------------------------------
def test_two_stages():
    R = _R([[0.1, 0.2], [0.8, 0.3], [0.5, 0.9]])
    out = matrix_metrics(R)
    assert _at(out, "immediate") == pytest.approx([0.8, 0.9])
    assert _at(out, "gain") == pytest.approx([0.7, 0.6])  # 0.8-0.1, 0.9-0.3
    assert _at(out, "acc") == pytest.approx([0.8, 0.7])  # (0.5+0.9)/2
    assert out["forgetting"][2] == pytest.approx(0.3)  # max(R[1,1]) - R[2,1] = 0.8 - 0.5
    assert out["bwt"][2] == pytest.approx(-0.3)  # R[2,1] - R[1,1]
    assert out["fwt"][2] == pytest.approx(0.1)  # R[1,2] - R[0,2] = 0.3 - 0.2


# --- T = 4 ---------------------------------------------------------------------------------------------------------
R4 = _R(
    [
        [0.1, 0.1, 0.2, 0.0],  # base
        [0.6, 0.3, 0.2, 0.1],
        [0.4, 0.8, 0.4, 0.2],
        [0.5, 0.6, 0.9, 0.3],
        [0.2, 0.7, 0.5, 1.0],
    ]
)


def test_four_stages():
    out = matrix_metrics(R4)
    assert _at(out, "immediate") == pytest.approx([0.6, 0.8, 0.9, 1.0])
    assert _at(out, "gain") == pytest.approx([0.5, 0.5, 0.5, 0.7])  # 1.0 - R[3,4] = 1.0 - 0.3
    assert _at(out, "acc") == pytest.approx([0.6, 0.6, 2.0 / 3, 0.6])  # (0.5+0.6+0.9)/3, (0.2+0.7+0.5+1.0)/4
    # t=2: 0.6-0.4; t=3: ((0.6-0.5) + (0.8-0.6))/2; t=4: ((0.6-0.2) + (0.8-0.7) + (0.9-0.5))/3
    # (at t=3, j=1 the best earlier value is R[1,1] = 0.6, not the more recent R[2,1] = 0.4)
    assert _at(out, "forgetting")[1:] == pytest.approx([0.2, 0.15, 0.3])
    # t=2: 0.4-0.6; t=3: ((0.5-0.6) + (0.6-0.8))/2; t=4: ((0.2-0.6) + (0.7-0.8) + (0.5-0.9))/3
    assert _at(out, "bwt")[1:] == pytest.approx([-0.2, -0.15, -0.3])
    # d_2 = 0.3-0.1, d_3 = 0.4-0.2, d_4 = 0.3-0.0; cumulative means
    assert _at(out, "fwt")[1:] == pytest.approx([0.2, 0.2, 0.7 / 3])


def test_four_stages_through_the_long_table():
    traj = trajectory_metrics(_metrics_df(R4, "lhas", 3))
    assert list(traj.columns) == ["selector", "seed", "stage", "metric", "value"]
    assert set(traj["selector"]) == {"lhas"} and set(traj["seed"]) == {3}
    assert _traj_value(traj, "acc", 4) == pytest.approx(0.6)
    assert _traj_value(traj, "forgetting", 3) == pytest.approx(0.15)
    assert _traj_value(traj, "fwt", 4) == pytest.approx(0.7 / 3)
    assert not ((traj["metric"] == "forgetting") & (traj["stage"] == 1)).any()


# --- selectors that never forget / forget everything ---------------------------------------------------------------
def test_never_forgets():
    R = _R([[0.1, 0.1, 0.1], [0.5, 0.2, 0.1], [0.5, 0.7, 0.2], [0.5, 0.7, 0.9]])
    out = matrix_metrics(R)
    assert _at(out, "forgetting")[1:] == pytest.approx([0.0, 0.0])
    assert _at(out, "bwt")[1:] == pytest.approx([0.0, 0.0])
    assert out["acc"][3] == pytest.approx(0.7)  # (0.5+0.7+0.9)/3
    assert _at(out, "fwt")[1:] == pytest.approx([0.1, 0.1])  # (0.2-0.1), ((0.2-0.1)+(0.2-0.1))/2


def test_forgets_everything():
    R = _R([[0.0, 0.0, 0.0], [0.8, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 1.0]])
    out = matrix_metrics(R)
    assert _at(out, "gain") == pytest.approx([0.8, 0.6, 1.0])
    assert _at(out, "forgetting")[1:] == pytest.approx([0.8, 0.7])  # t=3: (0.8 + 0.6)/2
    assert _at(out, "bwt")[1:] == pytest.approx([-0.8, -0.7])
    assert _at(out, "acc") == pytest.approx([0.8, 0.3, 1.0 / 3])
    assert _at(out, "fwt")[1:] == pytest.approx([0.0, 0.0])


# Transfer before training: stage 1 already reaches 0.6 on stage 2's eval set (R[1,2]) before stage 2 is trained,
# training it gives 0.5 (R[2,2]), and after stage 3 it is 0.4 (R[3,2]). The base row (0.9, 0.95) is never a stage.
R_TRANSFER = _R(
    [
        [0.9, 0.95, 0.1],  # base: high, but not part of the trajectory
        [0.7, 0.6, 0.2],
        [0.5, 0.5, 0.3],
        [0.6, 0.4, 0.8],
    ]
)


def test_forgetting_since_trained_when_transfer_precedes_training():
    out = matrix_metrics(R_TRANSFER, "since_trained")
    assert np.isnan(out["forgetting"][1])
    # t=2: j=1: max(R[1,1]) - R[2,1] = 0.7 - 0.5 = 0.2
    # t=3: j=1: max(R[1,1], R[2,1]) - R[3,1] = 0.7 - 0.6 = 0.1; j=2: max(R[2,2]) - R[3,2] = 0.5 - 0.4 = 0.1 -> 0.1
    assert out["forgetting"][2:].tolist() == pytest.approx([0.2, 0.1])
    assert matrix_metrics(R_TRANSFER)["forgetting"][2:].tolist() == pytest.approx([0.2, 0.1])  # the default


def test_forgetting_any_earlier_when_transfer_precedes_training():
    out = matrix_metrics(R_TRANSFER, "any_earlier")
    assert np.isnan(out["forgetting"][1])
    # t=2: j=1: 0.7 - 0.5 = 0.2 (the base's 0.9 does not count: 0.4 if it did)
    # t=3: j=1: 0.7 - 0.6 = 0.1; j=2: max(R[1,2], R[2,2]) - R[3,2] = 0.6 - 0.4 = 0.2 -> (0.1 + 0.2)/2 = 0.15
    assert out["forgetting"][2:].tolist() == pytest.approx([0.2, 0.15])
    # the other matrix metrics do not depend on the variant
    since = matrix_metrics(R_TRANSFER, "since_trained")
    for m in MATRIX_METRICS:
        if m != "forgetting":
            np.testing.assert_allclose(out[m], since[m], equal_nan=True)


def test_forgetting_variant_through_the_long_table():
    df = _metrics_df(R_TRANSFER)
    since = trajectory_metrics(df)
    anyl = trajectory_metrics(df, forgetting="any_earlier")
    assert _traj_value(since, "forgetting", 2) == pytest.approx(0.2)
    assert _traj_value(since, "forgetting", 3) == pytest.approx(0.1)
    assert _traj_value(anyl, "forgetting", 2) == pytest.approx(0.2)
    assert _traj_value(anyl, "forgetting", 3) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="forgetting must be one of"):
        trajectory_metrics(df, forgetting="max")


def test_forgetting_variants_exclude_the_base_row():
    # Stage 1 reaches 0.9 on stage 2 by transfer; the base model's 0.9 on stage 1 never counts (row 0).
    R = _R([[0.9, 0.1, 0.1], [0.6, 0.9, 0.1], [0.6, 0.5, 0.1], [0.6, 0.4, 0.8]])
    since, anyl = matrix_metrics(R, "since_trained"), matrix_metrics(R, "any_earlier")
    assert since["forgetting"][2] == pytest.approx(0.0)  # 0.6 - 0.6 (not 0.9 - 0.6 from the base row)
    assert anyl["forgetting"][2] == pytest.approx(0.0)
    assert since["forgetting"][3] == pytest.approx(0.05)  # ((0.6-0.6) + (0.5-0.4))/2
    assert anyl["forgetting"][3] == pytest.approx(0.25)  # ((0.6-0.6) + (0.9-0.4))/2
    for out in (since, anyl):
        assert out["forgetting"][3] != pytest.approx(0.4)  # what including the base row would give


def test_bad_forgetting_variant():
    with pytest.raises(ValueError, match="forgetting must be one of"):
        matrix_metrics(R4, "chaudhry")


def test_forgetting_can_be_negative_when_old_stages_improve():
    R = _R([[0.0, 0.0], [0.4, 0.1], [0.6, 0.7]])
    assert matrix_metrics(R)["forgetting"][2] == pytest.approx(-0.2)  # 0.4 - 0.6


def test_ties_in_the_matrix():
    R = _R([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])  # nothing changes at all
    out = matrix_metrics(R)
    for m in ("gain", "forgetting", "bwt", "fwt"):
        assert out[m][2] == pytest.approx(0.0)
    assert _at(out, "acc") == pytest.approx([0.5, 0.5])


def test_batched_matrices_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    R = rng.random((3, 2, 5, 5))
    out = matrix_metrics(R)
    for a in range(3):
        for b in range(2):
            single = matrix_metrics(R[a, b])
            for m in MATRIX_METRICS:
                np.testing.assert_allclose(out[m][a, b], single[m], equal_nan=True)


def test_bad_matrix_shape():
    with pytest.raises(ValueError, match="shape"):
        matrix_metrics(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="shape"):
        matrix_metrics(np.zeros((4, 2)))


def test_long_table_equals_core_for_many_trajectories():
    rng = np.random.default_rng(1)
    frames, mats = [], {}
    for sel in ("a", "b", "c"):
        for seed in (0, 1):
            R = np.round(rng.random((4, 4)), 3)
            R[:, 0] = n
            mats[(sel, seed)] = matrix_metrics(R)
            frames.append(_metrics_df(R, sel, seed))
    traj = trajectory_metrics(pd.concat(frames, ignore_index=True))
    for (sel, seed), out in mats.items():
        for m in MATRIX_METRICS:
            for t in range(1, 4):
                rows = traj[(traj.selector == sel) & (traj.seed == seed) & (traj.metric == m) & (traj.stage == t)]
                if np.isnan(out[m][t]):
                    assert rows.empty
                else:
                    assert float(rows["value"].iloc[0]) == pytest.approx(out[m][t])


# --- probe, imbalance, OOD -----------------------------------------------------------------------------------------
def test_probe_metrics_by_hand():
    steps, acc = np.arange(5), np.array([0.1, 0.3, 0.5, 0.6, 0.8])
    assert probe_metrics(steps, acc, lca_beta=2) == pytest.approx((0.3, 2.0))  # (0.1+0.3+0.5)/3; first >= 0.5
    assert probe_metrics(steps, acc)[0] == pytest.approx(0.46)  # all steps: 2.3/5
    assert probe_metrics(steps, acc, threshold=0.9, censor_at=5)[1] == 5.0  # never reached: censored
    assert probe_metrics(steps, acc, threshold=0.1)[1] == 0.0  # already there before the first step


def _curves(rows):
    return pd.DataFrame(rows, columns=["selector", "seed", "stage", "step", "split", "metric", "value"])


def test_probe_metrics_in_the_long_table():
    R = _R([[0.1, 0.1], [0.6, 0.2], [0.5, 0.7]])
    probe = [("s", 0, 1, k, "probe", "accuracy", v) for k, v in enumerate([0.2, 0.4, 0.4, 0.9])]
    noise = [("s", 0, 1, k, "probe", "loss", 9.0) for k in range(4)] + [("s", 0, 1, 0, "train", "accuracy", 1.0)]
    traj = trajectory_metrics(_metrics_df(R), _curves(probe + noise), lca_beta=1, threshold=0.4)
    assert _traj_value(traj, "lca", 1) == pytest.approx(0.3)  # (0.2 + 0.4)/2, steps 0..1
    assert _traj_value(traj, "steps_to_threshold", 1) == 1.0  # the tie at 0.4 counts as reached
    assert _traj_value(traj, "reached_threshold", 1) == 1.0
    traj = trajectory_metrics(_metrics_df(R), _curves(probe), threshold=0.95)
    assert _traj_value(traj, "lca", 1) == pytest.approx(0.475)  # (0.2+0.4+0.4+0.9)/4
    assert _traj_value(traj, "steps_to_threshold", 1) == 4.0  # never reached; no censor_at: last step 3, + 1
    assert _traj_value(traj, "reached_threshold", 1) == 0.0
    traj = trajectory_metrics(_metrics_df(R), _curves(probe), threshold=0.95, censor_at=31)
    assert _traj_value(traj, "steps_to_threshold", 1) == 31.0  # probe.steps = 30 -> 31
    assert set(traj[traj["metric"] == "lca"]["stage"]) == {1}  # no probe after the last stage


# Two selectors x 5 seeds, T = 2 (a probe after stage 1 only), 21 probe steps (0..20): 'r' reaches 0.5 at step 10
# in every seed, 's' at step 10 in seeds 0 and 1 and never in seeds 2, 3, 4.
def _censored_run() -> tuple[pd.DataFrame, pd.DataFrame]:
    R = _R([[0.1, 0.1], [0.6, 0.2], [0.5, 0.7]])
    frames, probe = [], []
    for sel in ("r", "s"):
        for seed in range(5):
            frames.append(_metrics_df(R + 0.01 * seed, sel, seed))
            reaches = sel == "r" or seed < 2
            for k in range(21):
                probe.append((sel, seed, 1, k, "probe", "accuracy", 0.6 if reaches and k >= 10 else 0.3))
    return pd.concat(frames, ignore_index=True), _curves(probe)


def test_censored_steps_to_threshold():
    metrics, curves = _censored_run()
    for censor_at in (21, None):  # probe.steps + 1 = 21; None: the last logged step (20) + 1
        traj = trajectory_metrics(metrics, curves, threshold=0.5, censor_at=censor_at)
        assert np.isfinite(traj["value"]).all()  # no inf, no NaN, ever
        stt = traj[traj["metric"] == "steps_to_threshold"].set_index(["selector", "seed"])["value"]
        got = traj[traj["metric"] == "reached_threshold"].set_index(["selector", "seed"])["value"]
        assert stt.to_dict() == {
            **{("r", k): 10.0 for k in range(5)},
            ("s", 0): 10.0,
            ("s", 1): 10.0,
            **{("s", k): 21.0 for k in (2, 3, 4)},
        }
        assert got.to_dict() == {
            **{("r", k): 1.0 for k in range(5)},
            ("s", 0): 1.0,
            ("s", 1): 1.0,
            **{("s", k): 0.0 for k in (2, 3, 4)},
        }
        assert set(traj[traj["metric"].isin(["steps_to_threshold", "reached_threshold"])]["stage"]) == {1}


def test_censored_steps_to_threshold_are_ranked_with_every_seed_paired():
    metrics, curves = _censored_run()
    ranking = rank_analysis(trajectory_metrics(metrics, curves, censor_at=21), baselines=["r"])
    d = ranking.differences.set_index(["selector", "metric", "stage"]).loc[("s", "steps_to_threshold", 1)]
    assert d["n_seeds"] == 5  # the seeds that never reached the threshold are paired, not dropped
    # oriented (lower is better): -(s - r) per seed = [0, 0, -11, -11, -11]
    assert d["diff"] == pytest.approx(-6.6)
    # exact two-sided sign-flip: |sum| >= 33 only when the three -11s share a sign: 2 of 8, times 4 for the zeros
    assert d["p_raw"] == pytest.approx(8 / 32)
    board = ranking.ranks[(ranking.ranks["metric"] == "steps_to_threshold") & (ranking.ranks["stage"] == 1)]
    assert board.set_index("selector")["mean"].to_dict() == pytest.approx({"r": 10.0, "s": 16.6})
    assert board.set_index("selector")["rank"].to_dict() == {"r": 1.0, "s": 2.0}
    assert (board["n_seeds"] == 5).all()
    assert "reached_threshold" not in set(ranking.differences["metric"])  # a companion, never tested on its own


def test_imbalance_by_hand():
    assert imbalance(np.array([0.8, 0.4])) == pytest.approx((0.4, 1.0 / 3))  # mean 0.6, std 0.2
    assert imbalance(np.array([0.5, 0.5, 0.5])) == pytest.approx((0.0, 0.0))
    rng_, cv = imbalance(np.zeros(3))
    assert rng_ == 0.0 and np.isnan(cv)


def _rows(*rows):
    return pd.DataFrame(rows, columns=METRICS_SCHEMA.names)


# T = 2 with one target skill per stage: eval/stage1 holds copy, eval/stage2 holds sort. The general set holds
# copy, sort and two never-targeted skills, count and lookup, at stages 0, 1, 2.
R_GEN = _R([[0.1, 0.1], [0.6, 0.2], [0.5, 0.7]])
EVAL_SKILLS = (
    ("s", 0, 1, "eval/stage1", 1, "copy", "accuracy", 0.6),
    ("s", 0, 1, "eval/stage2", 2, "sort", "accuracy", 0.2),
    ("s", 0, 2, "eval/stage1", 1, "copy", "accuracy", 0.5),
    ("s", 0, 2, "eval/stage2", 2, "sort", "accuracy", 0.7),
)
GENERAL = (
    ("s", 0, 0, "general", None, "copy", "accuracy", 0.1),
    ("s", 0, 0, "general", None, "sort", "accuracy", 0.1),
    ("s", 0, 0, "general", None, "count", "accuracy", 0.6),
    ("s", 0, 0, "general", None, "lookup", "accuracy", 0.4),
    ("s", 0, 1, "general", None, "copy", "accuracy", 0.8),
    ("s", 0, 1, "general", None, "sort", "accuracy", 0.2),
    ("s", 0, 1, "general", None, "count", "accuracy", 0.5),
    ("s", 0, 1, "general", None, "lookup", "accuracy", 0.3),
    ("s", 0, 1, "general", None, "all", "accuracy", 0.99),  # the aggregate row: not a skill
    ("s", 0, 1, "general", None, "count", "loss", 7.0),  # not accuracy
    ("s", 0, 2, "general", None, "copy", "accuracy", 0.6),
    ("s", 0, 2, "general", None, "sort", "accuracy", 0.6),
    ("s", 0, 2, "general", None, "count", "accuracy", 0.3),
    ("s", 0, 2, "general", None, "lookup", "accuracy", 0.2),
)


def test_imbalance_over_every_skill_of_the_general_set():
    df = pd.concat([_metrics_df(R_GEN), _rows(*EVAL_SKILLS, *GENERAL)], ignore_index=True)
    traj = trajectory_metrics(df)
    # stage 1: copy 0.8, sort 0.2, count 0.5, lookup 0.3 -> range 0.6; mean 0.45;
    #   deviations 0.35, -0.25, 0.05, -0.15 -> variance (0.1225 + 0.0625 + 0.0025 + 0.0225)/4 = 0.0525
    assert _traj_value(traj, "imbalance_range", 1) == pytest.approx(0.6)  # not 0: one target at stage 1 is not all
    assert _traj_value(traj, "imbalance_cv", 1) == pytest.approx(np.sqrt(0.0525) / 0.45)
    # stage 2: copy 0.6, sort 0.6, count 0.3, lookup 0.2 -> range 0.4; mean 0.425;
    #   deviations 0.175, 0.175, -0.125, -0.225 -> variance (0.030625*2 + 0.015625 + 0.050625)/4 = 0.031875
    assert _traj_value(traj, "imbalance_range", 2) == pytest.approx(0.4)
    assert _traj_value(traj, "imbalance_cv", 2) == pytest.approx(np.sqrt(0.031875) / 0.425)
    assert not ((traj["metric"] == "imbalance_range") & (traj["stage"] == 0)).any()  # stages >= 1 only


def test_imbalance_falls_back_to_the_eval_sets_without_a_general_set():
    df = pd.concat([_metrics_df(R_GEN), _rows(*EVAL_SKILLS)], ignore_index=True)
    traj = trajectory_metrics(df)
    # stage 1: only eval/stage1 counts (stage 2's set is in the future): copy alone -> range 0, cv 0
    assert _traj_value(traj, "imbalance_range", 1) == pytest.approx(0.0)
    assert _traj_value(traj, "imbalance_cv", 1) == pytest.approx(0.0)
    # stage 2: copy 0.5, sort 0.7 -> range 0.2; mean 0.6, std 0.1
    assert _traj_value(traj, "imbalance_range", 2) == pytest.approx(0.2)
    assert _traj_value(traj, "imbalance_cv", 2) == pytest.approx(0.1 / 0.6)
    assert "untrained_retention" not in set(traj["metric"])  # no general set: nothing to retain
    assert untargeted_skills(df) == []


def test_untrained_retention_by_hand():
    df = pd.concat([_metrics_df(R_GEN), _rows(*EVAL_SKILLS, *GENERAL)], ignore_index=True)
    assert untargeted_skills(df) == ["count", "lookup"]  # copy and sort are held by the stages' eval sets
    traj = trajectory_metrics(df)
    # base mean (0.6 + 0.4)/2 = 0.5; stage 1: (0.5 + 0.3)/2 = 0.4 -> 0.8; stage 2: (0.3 + 0.2)/2 = 0.25 -> 0.5
    assert _traj_value(traj, "untrained_retention", 1) == pytest.approx(0.8)
    assert _traj_value(traj, "untrained_retention", 2) == pytest.approx(0.5)


def test_untrained_retention_with_a_zero_base_has_no_row():
    zero = tuple(
        ("z", 0, stage, "general", None, skill, "accuracy", 0.0 if stage == 0 else 0.3)
        for stage in range(3)
        for skill in ("count", "lookup")
    )
    df = pd.concat(
        [_metrics_df(R_GEN), _metrics_df(R_GEN, "z"), _rows(*EVAL_SKILLS, *GENERAL, *zero)], ignore_index=True
    )
    traj = trajectory_metrics(df)
    z = traj[traj["selector"] == "z"]
    assert "untrained_retention" not in set(z["metric"])  # 0.3 / 0.0 is undefined: no row, not inf
    assert {"acc", "imbalance_range"} <= set(z["metric"])  # the rest of z's metrics are there
    s = traj[traj["selector"] == "s"]
    assert _traj_value(s, "untrained_retention", 2) == pytest.approx(0.5)
    assert np.isfinite(traj["value"]).all()


# T = 3; OOD sets of stages 1, 2 and 3 are evaluated after every stage, each with its own accuracy.
R_OOD = _R([[0.1, 0.1, 0.1], [0.6, 0.2, 0.1], [0.5, 0.7, 0.3], [0.4, 0.6, 0.9]])
OOD = (
    ("s", 0, 0, "ood/stage1-long", None, "all", "accuracy", 0.9),  # the base model: no stage 0 metrics
    ("s", 0, 1, "ood/stage1-long", None, "all", "accuracy", 0.2),
    ("s", 0, 1, "ood/stage1-format", None, "all", "accuracy", 0.4),
    ("s", 0, 1, "ood/stage2-long", None, "all", "accuracy", 0.0),  # stage 2 not trained yet: left out at stage 1
    ("s", 0, 1, "ood/stage3-long", None, "all", "accuracy", 0.0),
    ("s", 0, 1, "ood/stage1-long", None, "copy", "accuracy", 0.0),  # a per-skill OOD row: not the aggregate
    ("s", 0, 1, "ood/stage1-long", None, "all", "loss", 3.0),  # not accuracy
    ("s", 0, 2, "ood/stage1-long", None, "all", "accuracy", 0.1),
    ("s", 0, 2, "ood/stage1-format", None, "all", "accuracy", 0.3),
    ("s", 0, 2, "ood/stage2-long", None, "all", "accuracy", 0.8),
    ("s", 0, 2, "ood/stage3-long", None, "all", "accuracy", 0.0),
    ("s", 0, 3, "ood/stage1-long", None, "all", "accuracy", 0.1),
    ("s", 0, 3, "ood/stage1-format", None, "all", "accuracy", 0.1),
    ("s", 0, 3, "ood/stage2-long", None, "all", "accuracy", 0.4),
    ("s", 0, 3, "ood/stage3-long", None, "all", "accuracy", 0.8),
)


def test_ood_averages_only_the_stages_trained_so_far():
    traj = trajectory_metrics(pd.concat([_metrics_df(R_OOD), _rows(*OOD)], ignore_index=True))
    # ood_acc@1 = (0.2 + 0.4)/2 = 0.3; @2 = (0.1 + 0.3 + 0.8)/3 = 0.4; @3 = (0.1 + 0.1 + 0.4 + 0.8)/4 = 0.35
    assert [_traj_value(traj, "ood_acc", t) for t in (1, 2, 3)] == pytest.approx([0.3, 0.4, 0.35])
    # acc@1 = 0.6, acc@2 = (0.5 + 0.7)/2 = 0.6, acc@3 = (0.4 + 0.6 + 0.9)/3 = 19/30; gap = acc - ood_acc
    assert [_traj_value(traj, "ood_gap", t) for t in (1, 2, 3)] == pytest.approx([0.3, 0.2, 19 / 30 - 0.35])


def test_ood_set_without_a_stage_is_refused():
    bad = _rows(("s", 0, 1, "ood/long", None, "all", "accuracy", 0.5))
    with pytest.raises(ValueError, match="does not name its stage"):
        trajectory_metrics(pd.concat([_metrics_df(R_OOD), bad], ignore_index=True))


# --- the definitions table -------------------------------------------------------------------------------------------
def test_definitions_cover_every_metric_and_follow_the_variant():
    assert tuple(definitions()) == METRICS == tuple(DEFINITIONS)
    assert definitions()["forgetting"] == definitions("since_trained")["forgetting"] == FORGETTING_TEXT["since_trained"]
    assert definitions("any_earlier")["forgetting"] == FORGETTING_TEXT["any_earlier"]
    assert "j <= l < t" in definitions("since_trained")["forgetting"]
    assert "1 <= l < t" in definitions("any_earlier")["forgetting"]
    for m in METRICS:
        if m != "forgetting":
            assert definitions("any_earlier")[m] == definitions("since_trained")[m] == DEFINITIONS[m].text
    lower = {m for m, up in HIGHER_IS_BETTER.items() if not up}
    assert lower == {"forgetting", "steps_to_threshold", "imbalance_range", "imbalance_cv", "ood_gap"}


# --- the synthetic run follows the output contract -------------------------------------------------------------------
def test_synthetic_run_follows_the_contract(tmp_path):
    store = build_synthetic_run(str(tmp_path), selectors=("random", "rds"), seeds=(0, 1), n_stages=3, probe_steps=5)
    metrics, curves, _ = read_long_tables(store)
    ood = {f"ood/stage{j}-{kind}" for j in (1, 2, 3) for kind in ("long", "format")}
    assert set(metrics["eval_set"]) == {"eval/stage1", "eval/stage2", "eval/stage3", "general", *ood}
    general = metrics[metrics["eval_set"] == "general"]
    assert general["eval_stage"].isna().all() and set(general["stage"]) == {0, 1, 2, 3}
    assert set(general["skill"]) == {"copy", "reverse", "sort", "add", "count", "lookup", "all"}
    assert untargeted_skills(metrics) == ["count", "lookup"]
    traj = trajectory_metrics(metrics, curves, censor_at=6)
    assert np.isfinite(traj["value"]).all()
    # every metric is defined somewhere in the synthetic run, but lm_eval_* (only with evaluation.lm_eval rows,
    # checked by hand in tests/test_lm_eval.py)
    assert {m for m in METRICS if not m.startswith("lm_eval_")} == set(traj["metric"])

    def at(sel, m, t):
        v = traj[(traj["selector"] == sel) & (traj["metric"] == m) & (traj["stage"] == t)]["value"]
        return v.to_numpy()

    # the generative rule: the focused selector loses more of the never-targeted skills, in every seed
    assert (at("rds", "untrained_retention", 3) < at("random", "untrained_retention", 3)).all()
    assert (at("rds", "untrained_retention", 3) < 1).all()
    # the base model (stage 0) is the same for every selector of a seed
    base = general[(general["stage"] == 0) & general["skill"].isin(["count", "lookup"])]
    assert base.groupby(["seed", "skill", "metric"])["value"].nunique().eq(1).all()
    # same arguments, same bytes
    again = read_long_tables(
        build_synthetic_run(str(tmp_path / "b"), selectors=("random", "rds"), seeds=(0, 1), n_stages=3, probe_steps=5)
    )[0]
    key = ["selector", "seed", "stage", "eval_set", "skill", "metric"]
    pd.testing.assert_frame_equal(
        metrics.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    )


# --- contract checks -----------------------------------------------------------------------------------------------
def test_duplicate_rows_are_refused():
    df = _metrics_df(R4)
    with pytest.raises(ValueError, match="duplicate"):
        trajectory_metrics(pd.concat([df, df.head(1)], ignore_index=True))


def test_missing_units_names_what_is_missing():
    a = _metrics_df(R4, "a", 0)
    b = _metrics_df(R4, "b", 0)
    b = b[b["stage"] != 2]
    c = _metrics_df(R4, "a", 1)
    c = c[~((c["stage"] == 3) & (c["eval_stage"] == 4))]
    problems = missing_units(pd.concat([a, b, c], ignore_index=True))
    assert "selector 'b': missing seed(s) [1]" in problems
    assert "selector 'b' seed 0: missing stage(s) [2] of 0..4" in problems
    assert "selector 'a' seed 1 stage 3: no accuracy on eval stage(s) [4]" in problems
    assert len(problems) == 3
    assert missing_units(a) == []


def test_missing_units_against_what_the_config_promises():
    a = _metrics_df(R4, "a", 0)
    problems = missing_units(a, n_stages=5, selectors=["a", "z"], seeds=[0, 7])
    assert problems == [
        "selector 'z': no committed stage at all (the config lists it)",
        "selector 'a': missing seed(s) [7]",
        "selector 'a' seed 0: missing stage(s) [5] of 0..5",
        "selector 'a' seed 0 stage 0: no accuracy on eval stage(s) [5]",
        "selector 'a' seed 0 stage 1: no accuracy on eval stage(s) [5]",
        "selector 'a' seed 0 stage 2: no accuracy on eval stage(s) [5]",
        "selector 'a' seed 0 stage 3: no accuracy on eval stage(s) [5]",
        "selector 'a' seed 0 stage 4: no accuracy on eval stage(s) [5]",
    ]
