"""LHAS's terms on one scale: each divided by the spread of its first-step gains, contributions that sum to J.

Expected values are computed here with dense numpy (knn >= N, so the kNN graph holds every positive cosine), not by
the selection code.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lhas_ray.selection import SelectionContext, get_selector


def _vectors(a: np.ndarray) -> pa.FixedSizeListArray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), a.shape[1])


def _pool(n_tight: int = 30, n_broad: int = 170, seed: int = 0):
    """High-utility points packed in one tight clump (they cover only each other) and broadly spread low-utility points:
    utility wants the clump, coverage wants one of it and the spread."""
    rng = np.random.default_rng(seed)
    tight = np.array([3.0, 0, 0, 0, 0, 0]) + 0.05 * rng.normal(size=(n_tight, 6))
    broad = rng.normal(size=(n_broad, 6))
    emb = np.vstack([tight, broad]).astype(np.float32)
    quality = np.concatenate([rng.uniform(0.6, 1.0, n_tight), rng.uniform(0.0, 0.5, n_broad)]).astype(np.float32)
    n = len(emb)
    grad = rng.normal(size=(n, 4)).astype(np.float32)
    table = pa.table(
        {
            "example_id": pa.array(np.arange(n), pa.int64()),
            "quality": quality,
            "emb": _vectors(emb),
            "grad": _vectors(grad),
        }
    )
    return table, emb.astype(np.float64), quality.astype(np.float64), grad.astype(np.float64)


def _first_gains(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = np.maximum(x @ x.T, 0.0)
    return sim.sum(axis=0), sim  # FL({i}) = sum_j max(0, cos(e_i, e_j))


def test_each_term_is_divided_by_the_spread_of_its_first_step_gains():
    table, emb, quality, grad = _pool()
    n, k = table.num_rows, 20
    fl1, _ = _first_gains(emb)
    u = (quality - quality.min()) / (quality.max() - quality.min())
    proxy = np.ones(4)
    cos = grad @ proxy / np.linalg.norm(grad, axis=1) / np.linalg.norm(proxy)
    sel = get_selector("lhas", l_u=1, l_c=1, l_f=1, l_a=1, knn=n, n_clusters=4)
    sel.select(table, k, SelectionContext(proxy_grad=proxy, seed=0))
    units = {t: v["unit"] for t, v in sel.terms_.items()}
    assert units["utility"] == pytest.approx(u.std(), rel=1e-6)
    assert units["coverage"] == pytest.approx(fl1.std(), rel=1e-5)
    assert units["alignment"] == pytest.approx(cos.std(), rel=1e-5)
    assert units["concentration"] == pytest.approx(4 / (2 * k))
    # unscaled, coverage's first-step gains would swamp utility's: the pool is built that way
    assert fl1.std() / u.std() > 20


def _greedy(u: np.ndarray, sim: np.ndarray, k: int, cov_coef: float) -> list[int]:
    """Naive greedy of sum_S u + cov_coef * FL(S), dense, by hand."""
    cover, picked = np.zeros(len(u)), []
    for _ in range(k):
        gain = u + cov_coef * np.maximum(sim - cover[None, :], 0.0).sum(axis=1)
        gain[picked] = -np.inf
        i = int(np.argmax(gain))
        picked.append(i)
        cover = np.maximum(cover, sim[i])
    return picked


def test_the_greedy_optimises_the_scaled_terms():
    """Equal weights: the selection is naive greedy on u/sd(u) + FL(S)/sd(FL({.})) worked out by hand, and differs
    from greedy on the old units (FL * k/N beside u in [0, 1], where coverage's first-step spread is 3.6x utility's)."""
    table, emb, quality, _ = _pool()
    n, k = table.num_rows, 20
    fl1, sim = _first_gains(emb)
    u = (quality - quality.min()) / (quality.max() - quality.min())
    picks = get_selector("lhas", l_u=1, l_c=1, l_f=0, l_a=0, knn=n).select(table, k)
    assert picks.tolist() == _greedy(u / u.std(), sim, k, 1.0 / fl1.std())
    old = _greedy(u, sim, k, k / n)
    assert (k / n) * fl1.std() > 3 * u.std() and set(old) != set(picks.tolist())


def test_term_contributions_sum_to_J_computed_by_hand():
    table, emb, quality, grad = _pool(seed=3)
    n, k = table.num_rows, 25
    proxy = np.array([1.0, -0.5, 0.2, 0.0])
    sel = get_selector("lhas", l_u=0.7, l_c=1.3, l_f=0.4, l_a=2.0, knn=n, clusters="kmeans", n_clusters=5)
    ids = sel.select(table, k, SelectionContext(proxy_grad=proxy, seed=1))
    picks = ids  # example_id == row position here
    _, sim = _first_gains(emb)
    fl1 = sim.sum(axis=0)
    u = (quality - quality.min()) / (quality.max() - quality.min())
    cos = grad @ proxy / np.linalg.norm(grad, axis=1) / np.linalg.norm(proxy)
    terms = sel.terms_
    assert terms["utility"]["contribution"] == pytest.approx(0.7 * u[picks].sum() / u.std(), rel=1e-6)
    assert terms["alignment"]["contribution"] == pytest.approx(0.4 * cos[picks].sum() / cos.std(), rel=1e-5)
    fl = sim[picks].max(axis=0).sum()
    assert terms["coverage"]["contribution"] == pytest.approx(1.3 * fl / fl1.std(), rel=1e-5)
    conc = terms["concentration"]
    assert conc["contribution"] < 0 and conc["unit"] == pytest.approx(5 / (2 * k))
    # J by hand: its value is the greedy's objective; every term's weight and unit shown
    J = sum(t["contribution"] for t in terms.values())
    expected_without_conc = 0.7 * u[picks].sum() / u.std() + 0.4 * cos[picks].sum() / cos.std() + 1.3 * fl / fl1.std()
    assert J == pytest.approx(expected_without_conc + conc["contribution"], rel=1e-6)
    assert {t: v["weight"] for t, v in terms.items()} == {
        "utility": 0.7,
        "coverage": 1.3,
        "alignment": 0.4,
        "concentration": 2.0,
    }
    # the counts behind the concentration contribution: sum_c n_c^2 * C / (2k) over the k-means clusters of the picks
    sq = -conc["contribution"] / 2.0 / conc["unit"]
    assert sq == pytest.approx(round(sq)) and k <= round(sq) <= k * k


def test_target_utility_is_the_cosine_to_the_nearest_target_example():
    """utility 'target' (RDS+'s relevance): LHAS with only l_u picks the k pool examples whose best cosine to any target
    example is highest, in that order; the selector asks the protocol for the target embeddings."""
    table, emb, _, _ = _pool(seed=5)
    targets = np.random.default_rng(9).normal(size=(4, emb.shape[1]))
    sel = get_selector("lhas", l_u=1.0, l_c=0.0, l_f=0.0, l_a=0.0, utility="target")
    assert "target_embs" in sel.context_fields and "emb" in sel.requires
    ids = sel.select(table, 12, SelectionContext(target_embs=targets.astype(np.float32), seed=0))
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    best = (x @ t.T).max(axis=1)
    assert list(ids) == list(np.argsort(-best, kind="stable")[:12])
    # the other selectors that take a utility ask for the same context
    assert "target_embs" in get_selector("fl_utility", utility="target").context_fields
    assert "target_embs" not in get_selector("lhas").context_fields
