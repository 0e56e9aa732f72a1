"""Few-seed statistics: exact sign-flip p-values, Holm and t intervals against hand-worked cases, enumeration, scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from lhas_ray.evaluation.stats import EXACT_MAX_SEEDS, holm, min_attainable_p, sign_flip_pvalue, t_interval


def _enumerated_p(d, alternative: str) -> float:
    """The exact sign-flip p-value by plain-Python enumeration of every sign pattern (the seeds present only)."""
    d = [float(v) for v in d if not np.isnan(v)]
    observed = sum(d)
    tol = 1e-9 * sum(abs(v) for v in d)
    hits = 0
    patterns = list(itertools.product((1.0, -1.0), repeat=len(d)))
    for signs in patterns:
        s = sum(sg * v for sg, v in zip(signs, d, strict=True))
        if alternative == "greater":
            hits += s >= observed - tol
        elif alternative == "less":
            hits += s <= observed + tol
        else:
            hits += abs(s) >= abs(observed) - tol
    return hits / len(patterns)


def _sum_stat(x, axis):
    return np.sum(x, axis=axis)


# --- sign_flip_pvalue -----------------------------------------------------------------------------------------------
def test_sign_flip_hand_enumerated():
    d = [0.3, -0.1, 0.2]  # observed sum 0.4
    # the 8 sign patterns (s1, s2, s3) and the sum s1*0.3 + s2*(-0.1) + s3*0.2, written out by hand
    sums = {
        (+1, +1, +1): 0.4,
        (+1, +1, -1): 0.0,
        (+1, -1, +1): 0.6,
        (+1, -1, -1): 0.2,
        (-1, +1, +1): -0.2,
        (-1, +1, -1): -0.6,
        (-1, -1, +1): 0.0,
        (-1, -1, -1): -0.4,
    }
    assert len(sums) == 8
    # greater: sums >= 0.4 are 0.4 and 0.6; less: every sum but 0.6 is <= 0.4; two-sided: |sum| >= 0.4 is 4 of 8
    assert sign_flip_pvalue(d, "greater") == pytest.approx(2 / 8)
    assert sign_flip_pvalue(d, "less") == pytest.approx(7 / 8)
    assert sign_flip_pvalue(d, "two-sided") == pytest.approx(4 / 8)
    assert sign_flip_pvalue(d) == pytest.approx(4 / 8)  # two-sided is the default
    assert isinstance(sign_flip_pvalue(d), float)


def test_sign_flip_matches_enumeration_and_scipy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 6, 8):
        for _ in range(10):
            d = np.round(rng.normal(size=n), 1)  # rounding makes ties among the pattern sums common
            for alt in ("two-sided", "greater", "less"):
                expected = _enumerated_p(d, alt)
                assert sign_flip_pvalue(d, alt) == pytest.approx(expected, abs=1e-12), (d, alt)
    d = rng.normal(size=7)
    for alt in ("two-sided", "greater", "less"):
        ref = sps.permutation_test(
            (d,), _sum_stat, permutation_type="samples", alternative=alt, n_resamples=np.inf, vectorized=True
        )
        assert sign_flip_pvalue(d, alt) == pytest.approx(ref.pvalue, abs=1e-12)


def test_sign_flip_batched_equals_per_row():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(3, 4, 6))
    d[0, 1, 2] = np.nan
    d[2, 3, :] = np.nan  # no seed: NaN
    for alt in ("two-sided", "greater", "less"):
        batch = sign_flip_pvalue(d, alt)
        assert batch.shape == (3, 4)
        for i, j in itertools.product(range(3), range(4)):
            row = sign_flip_pvalue(d[i, j], alt)
            if np.isnan(row):
                assert np.isnan(batch[i, j]) and (i, j) == (2, 3)
            else:
                assert batch[i, j] == pytest.approx(row, abs=1e-15)


def test_sign_flip_missing_seed_is_left_out():
    d = np.array([0.3, np.nan, -0.1, 0.2, np.nan])
    for alt in ("two-sided", "greater", "less"):
        assert sign_flip_pvalue(d, alt) == pytest.approx(sign_flip_pvalue([0.3, -0.1, 0.2], alt), abs=1e-15)
    assert sign_flip_pvalue(d, "greater") == pytest.approx(2 / 8)  # the hand-worked case above
    assert np.isnan(sign_flip_pvalue([np.nan, np.nan], "greater"))


def test_sign_flip_smallest_p_and_zeros():
    assert min_attainable_p(5) == 1 / 32
    assert min_attainable_p(5, "two-sided") == 2 / 32
    assert min_attainable_p(10) == 1 / 1024
    d = [0.1, 0.5, 0.2, 0.3, 0.05]  # every difference positive: only the observed pattern is as large
    assert sign_flip_pvalue(d, "greater") == 1 / 32
    assert sign_flip_pvalue(d, "two-sided") == 2 / 32
    assert sign_flip_pvalue(d, "less") == 1.0
    assert sign_flip_pvalue([0.0, 0.0, 0.0], "two-sided") == 1.0  # no difference at all
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_pvalue(d, "bigger")


def _exact_by_numpy(d: np.ndarray, alternative: str) -> float:
    """Every one of the 2^n sign patterns, in plain numpy (the test's own enumeration, not the module's)."""
    n = len(d)
    patterns = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
    sums = patterns @ d
    obs = d.sum()
    tol = 1e-9 * np.abs(d).sum()
    if alternative == "greater":
        return float(np.mean(sums >= obs - tol))
    if alternative == "less":
        return float(np.mean(sums <= obs + tol))
    return float(np.mean(np.abs(sums) >= abs(obs) - tol))


def test_sign_flip_monte_carlo_beyond_16_seeds():
    n = EXACT_MAX_SEEDS + 1
    assert n == 17
    rng = np.random.default_rng(7)
    d = rng.normal(loc=0.25, size=n)
    for alt in ("two-sided", "greater", "less"):
        exact = _exact_by_numpy(d, alt)
        mc = sign_flip_pvalue(d, alt)
        assert abs(mc - exact) < 0.01, (alt, mc, exact)
    # Monte Carlo is (1 + hits) / (1 + n_mc): never 0, and 1 / (1 + n_mc) when no random pattern is as extreme
    assert sign_flip_pvalue(np.abs(d) + 1.0, "greater", n_mc=999) == pytest.approx(1 / 1000)
    # it is seeded: the same call gives the same p, another seed another p
    mc_two = sign_flip_pvalue(d, "two-sided", n_mc=2000, seed=1)
    assert sign_flip_pvalue(d, "two-sided", n_mc=2000, seed=1) == mc_two
    assert sign_flip_pvalue(d, "two-sided", n_mc=2000, seed=2) != mc_two
    # 16 seeds is still exact: the smallest p is attained
    assert sign_flip_pvalue(np.ones(16), "greater") == 1 / 2**16


# --- holm --------------------------------------------------------------------------------------------------------
def test_holm_hand_worked():
    p = [0.01, 0.04, 0.03, 0.005]
    # step-down with m = 4: sort 0.005, 0.01, 0.03, 0.04 and scale by 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04;
    # the running max keeps the adjusted values monotone: 0.02, 0.03, 0.06, 0.06 (0.04 is raised to 0.06)
    expected = [0.03, 0.06, 0.06, 0.02]
    assert holm(p) == pytest.approx(expected, abs=1e-15)
    # capping at 1: sort 0.04, 0.55, 0.6 -> 3*0.04 = 0.12, 2*0.55 = 1.1, 1*0.6 = 0.6 -> running max 0.12, 1.1, 1.1
    assert holm([0.04, 0.6, 0.55]) == pytest.approx([0.12, 1.0, 1.0], abs=1e-15)
    # ties: both members of a tied pair get the larger multiplier
    assert holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5], abs=1e-15)


def test_holm_nan_is_not_a_member():
    p = [0.01, np.nan, 0.04, 0.03, np.nan, 0.005]
    out = holm(p)
    assert np.isnan(out[1]) and np.isnan(out[4])
    assert out[[0, 2, 3, 5]] == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)  # m = 4, not 6
    assert holm([0.02]) == pytest.approx([0.02])
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm(np.array([])).shape == (0,)


def test_holm_against_statsmodels():
    multitest = pytest.importorskip(
        "statsmodels.stats.multitest",
        reason="a second Holm reference; statsmodels is no dependency (test_holm_hand_worked checks Holm by hand)",
    )
    p = np.random.default_rng(3).uniform(0, 0.2, size=25)
    assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1], abs=1e-12)


# --- t_interval --------------------------------------------------------------------------------------------------
def test_t_interval_matches_scipy():
    rng = np.random.default_rng(4)
    for n in (2, 3, 5, 10):
        for level in (0.9, 0.95):
            x = rng.normal(loc=1.0, scale=2.0, size=n)
            mean, lo, hi = t_interval(x, level)
            ref_lo, ref_hi = sps.t.interval(level, n - 1, loc=x.mean(), scale=sps.sem(x))
            assert float(mean) == pytest.approx(x.mean(), abs=1e-12)
            assert (float(lo), float(hi)) == pytest.approx((ref_lo, ref_hi), abs=1e-12)


def test_t_interval_batched_with_missing_seeds():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6))
    x[1, [0, 3]] = np.nan
    x[2, 1:] = np.nan  # one value left
    x[3, :] = np.nan  # none
    mean, lo, hi = t_interval(x)
    assert mean.shape == lo.shape == hi.shape == (4,)
    for i in (0, 1):
        row = x[i][~np.isnan(x[i])]
        ref = sps.t.interval(0.95, len(row) - 1, loc=row.mean(), scale=sps.sem(row))
        assert mean[i] == pytest.approx(row.mean(), abs=1e-12)
        assert (lo[i], hi[i]) == pytest.approx(ref, abs=1e-12)
    assert mean[2] == pytest.approx(x[2, 0]) and np.isnan(lo[2]) and np.isnan(hi[2])
    assert np.isnan(mean[3]) and np.isnan(lo[3]) and np.isnan(hi[3])


def test_t_interval_one_value_has_no_interval():
    mean, lo, hi = t_interval([0.7])
    assert float(mean) == pytest.approx(0.7)
    assert np.isnan(lo) and np.isnan(hi)
