"""Trajectory metrics against accuracy matrices worked out by hand (values in the comments are the hand arithmetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lhas_ray.evaluation.metrics import (
    MATRIX_METRICS,
    imbalance,
    matrix_metrics,
    missing_units,
    probe_metrics,
    trajectory_metrics,
)

try:
    from synthetic_run import METRICS_SCHEMA, long_metrics_from_matrix
except ImportError:  # tests/ is a package
    from tests.synthetic_run import METRICS_SCHEMA, long_metrics_from_matrix

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


def test_forgetting_takes_the_best_of_every_earlier_stage_but_not_the_base():
    # DESIGN.md: f_j^k = max_{l<k} R[l, j] - R[k, j] over the trajectory's stages. Stage 1 reached 0.9 on stage 2 by
    # transfer before stage 2 was trained: losing that counts. The base model's 0.9 on stage 1 does not (row 0).
    R = _R([[0.9, 0.1, 0.1], [0.6, 0.9, 0.1], [0.6, 0.5, 0.1], [0.6, 0.4, 0.8]])
    out = matrix_metrics(R)
    assert out["forgetting"][2] == pytest.approx(0.0)  # 0.6 - 0.6 (not 0.9 - 0.6 from the base row)
    assert out["forgetting"][3] == pytest.approx(0.25)  # ((0.6-0.6) + (0.9-0.4))/2
    assert out["forgetting"][3] != pytest.approx(0.4)  # what including the base row would give
    assert out["forgetting"][3] != pytest.approx(0.05)  # what counting only rows l >= j would give


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
    assert probe_metrics(steps, acc, threshold=0.9)[1] == np.inf  # never reached
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
    traj = trajectory_metrics(_metrics_df(R), _curves(probe), threshold=0.95)
    assert _traj_value(traj, "lca", 1) == pytest.approx(0.475)  # (0.2+0.4+0.4+0.9)/4
    assert _traj_value(traj, "steps_to_threshold", 1) == np.inf
    assert set(traj[traj["metric"] == "lca"]["stage"]) == {1}  # no probe after the last stage


def test_imbalance_by_hand():
    assert imbalance(np.array([0.8, 0.4])) == pytest.approx((0.4, 1.0 / 3))  # mean 0.6, std 0.2
    assert imbalance(np.array([0.5, 0.5, 0.5])) == pytest.approx((0.0, 0.0))
    rng_, cv = imbalance(np.zeros(3))
    assert rng_ == 0.0 and np.isnan(cv)


def _rows(*rows):
    return pd.DataFrame(rows, columns=METRICS_SCHEMA.names)


def test_imbalance_and_ood_in_the_long_table():
    base = _metrics_df(_R([[0.1, 0.1, 0.1], [0.6, 0.2, 0.1], [0.5, 0.7, 0.3]]))
    skills = _rows(
        # after stage 1: only eval/stage1 counts -> copy 0.8, add 0.4
        ("s", 0, 1, "eval/stage1", 1, "copy", "accuracy", 0.8),
        ("s", 0, 1, "eval/stage1", 1, "add", "accuracy", 0.4),
        ("s", 0, 1, "eval/stage2", 2, "sort", "accuracy", 0.0),  # a future stage: ignored at stage 1
        # after stage 2: copy 0.8, add (0.4+0.6)/2 = 0.5, sort 0.2 -> range 0.6, mean 0.5, std sqrt(0.06)
        ("s", 0, 2, "eval/stage1", 1, "copy", "accuracy", 0.8),
        ("s", 0, 2, "eval/stage1", 1, "add", "accuracy", 0.4),
        ("s", 0, 2, "eval/stage2", 2, "add", "accuracy", 0.6),
        ("s", 0, 2, "eval/stage2", 2, "sort", "accuracy", 0.2),
        ("s", 0, 2, "eval/stage2", 2, "sort", "loss", 5.0),  # not accuracy: ignored
        # OOD after stage 2: mean 0.4; acc at stage 2 = (0.5+0.7)/2 = 0.6 -> gap 0.2
        ("s", 0, 2, "ood/long", None, "all", "accuracy", 0.3),
        ("s", 0, 2, "ood/format", None, "all", "accuracy", 0.5),
        ("s", 0, 2, "ood/format", None, "copy", "accuracy", 0.0),  # a per-skill OOD row: not the aggregate
    )
    traj = trajectory_metrics(pd.concat([base, skills], ignore_index=True))
    assert _traj_value(traj, "imbalance_range", 1) == pytest.approx(0.4)
    assert _traj_value(traj, "imbalance_cv", 1) == pytest.approx(1.0 / 3)
    assert _traj_value(traj, "imbalance_range", 2) == pytest.approx(0.6)
    assert _traj_value(traj, "imbalance_cv", 2) == pytest.approx(np.sqrt(0.06) / 0.5)
    assert _traj_value(traj, "ood_acc", 2) == pytest.approx(0.4)
    assert _traj_value(traj, "ood_gap", 2) == pytest.approx(0.2)
    assert not ((traj["metric"] == "ood_acc") & (traj["stage"] == 1)).any()


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
