"""Selectors: every family by name, exact lazy greedy, k-center's 2x bound, LHAS reducing to top-k, row-order
independence, GreeDi on Ray, and a clear ValueError for every bad input before any work."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhas_ray.selection import (
    SelectionContext,
    available_selectors,
    facility_location_value,
    get_selector,
    validate_features,
)
from lhas_ray.selection.objective import QUANT, build_objective, similarity_graph
from lhas_ray.selection.optimisers import lazy_greedy, naive_greedy, stochastic_greedy

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SKILLS = np.array(["arith", "copy", "reverse", "sort"])


def _vectors(a: np.ndarray) -> pa.FixedSizeListArray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), a.shape[1])


def make_features(
    n: int = 300, d: int = 8, d_emb: int = 6, seed: int = 0, ids: np.ndarray | None = None, ties: bool = False
) -> pa.Table:
    """A pool with every feature column, ids shuffled so row order is not id order; ``ties`` repeats values/vectors."""
    rng = np.random.default_rng(seed)

    def scalars(x: np.ndarray) -> pa.Array:
        return pa.array((np.round(x * 2) / 2 if ties else x).astype(np.float32))

    def rows(m: int, width: int) -> np.ndarray:
        return rng.normal(size=(10, width))[rng.integers(0, 10, m)] if ties else rng.normal(size=(m, width))

    grad = rows(n, d)
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    ids = rng.permutation(n).astype(np.int64) * 7 + 3 if ids is None else ids
    return pa.table(
        {
            "example_id": pa.array(ids, pa.int64()),
            "loss": scalars(rng.gamma(2.0, size=n)),
            "grad": _vectors(grad),
            "grad_norm": scalars(rng.random(n)),
            "el2n": scalars(rng.random(n)),
            "emb": _vectors(rows(n, d_emb)),
            "quality": scalars(-rng.gamma(2.0, size=n)),
            "skill": pa.array(rng.choice(SKILLS, n)),
        }
    )


def make_context(d: int = 8, d_emb: int = 6, seed: int = 0) -> SelectionContext:
    rng = np.random.default_rng(seed + 100)
    return SelectionContext(
        target_grads=rng.normal(size=(2, d)),
        target_embs=rng.normal(size=(5, d_emb)),
        proxy_grad=rng.normal(size=d),
        seed=seed,
    )


@pytest.fixture(scope="module")
def features() -> pa.Table:
    return make_features()


@pytest.fixture(scope="module")
def context() -> SelectionContext:
    return make_context()


# ---------------------------------------------------------------- every selector, by name


def test_at_least_twelve_families_are_registered():
    names = set(available_selectors())
    assert {"random", "loss_high", "loss_low", "grand", "el2n", "less", "rds", "kcenter", "facility_location"} <= names
    assert {"quality", "utility_diversity", "fl_utility", "lhas"} <= names


@pytest.mark.parametrize("name", available_selectors())
def test_selector_returns_k_distinct_pool_ids(name, features, context):
    sel = get_selector(name)
    assert sel.requires <= {"loss", "grad", "grad_norm", "el2n", "emb", "quality", "skill"}
    assert sel.context_fields <= {"target_grads", "target_embs", "proxy_grad"}
    out = sel.select(features.select(["example_id", *sorted(sel.requires | sel.optional)]), 40, context)
    assert out.dtype == np.int64 and out.shape == (40,)
    assert len(set(out.tolist())) == 40
    assert set(out.tolist()) <= set(features.column("example_id").to_pylist())
    np.testing.assert_array_equal(out, sel.select(features, 40, context))  # deterministic; extra columns ignored


@pytest.mark.parametrize("name", available_selectors())
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(perm_seed=st.integers(0, 2**32 - 1), chunks=st.integers(1, 4), ties=st.booleans())
def test_result_does_not_depend_on_row_order(name, perm_seed, chunks, ties, context):
    sel = get_selector(name)
    features = make_features(ties=ties)
    perm = np.random.default_rng(perm_seed).permutation(features.num_rows)
    shuffled = features.take(pa.array(perm))
    shuffled = pa.Table.from_batches(shuffled.to_batches(max_chunksize=-(-features.num_rows // chunks)))
    np.testing.assert_array_equal(sel.select(features, 25, context), sel.select(shuffled, 25, context))


def test_simple_rankings_follow_their_column(features, context):
    ids = features.column("example_id").to_numpy()

    def ranked(col: str, sign: float) -> np.ndarray:
        v = sign * features.column(col).to_numpy().astype(np.float64)
        return ids[np.lexsort((ids, -v))][:10]

    np.testing.assert_array_equal(get_selector("loss_high").select(features, 10), ranked("loss", 1))
    np.testing.assert_array_equal(get_selector("loss_low").select(features, 10), ranked("loss", -1))
    np.testing.assert_array_equal(get_selector("grand").select(features, 10), ranked("grad_norm", 1))
    np.testing.assert_array_equal(get_selector("el2n").select(features, 10), ranked("el2n", 1))
    np.testing.assert_array_equal(get_selector("quality").select(features, 10), ranked("quality", 1))


def test_random_is_seeded_by_context_or_param(features):
    sel = get_selector("random")
    a = sel.select(features, 20, SelectionContext(seed=1))
    np.testing.assert_array_equal(a, sel.select(features, 20, SelectionContext(seed=1)))
    assert not np.array_equal(a, sel.select(features, 20, SelectionContext(seed=2)))
    fixed = get_selector("random", seed=5)
    np.testing.assert_array_equal(fixed.select(features, 20, SelectionContext(seed=1)), fixed.select(features, 20))


def test_less_takes_max_over_target_skills():
    t = make_features(50, d=4)
    grad = np.asarray(t.column("grad").combine_chunks().flatten()).reshape(50, 4)
    ids = t.column("example_id").to_numpy()
    ctx = SelectionContext(target_grads=np.stack([np.ones(4), grad[17] * 3.0]))  # row 17 is exactly target skill 2
    assert get_selector("less").select(t, 1, ctx)[0] == ids[17]


def test_rds_goes_round_robin_over_targets():
    t = make_features(60, d_emb=5)
    emb = np.asarray(t.column("emb").combine_chunks().flatten()).reshape(60, 5)
    ids = t.column("example_id").to_numpy()
    rows = [4, 30, 11]
    out = get_selector("rds").select(t, 6, SelectionContext(target_embs=emb[rows] * 2.0))
    np.testing.assert_array_equal(out[:3], ids[rows])  # each target first takes its own copy, in target order
    assert len(set(out.tolist())) == 6


def test_rds_extends_target_lists_when_targets_collide():
    t = make_features(60, d_emb=5)
    emb = np.asarray(t.column("emb").combine_chunks().flatten()).reshape(60, 5)
    ids = t.column("example_id").to_numpy()
    target = emb[8]
    out = get_selector("rds").select(t, 45, SelectionContext(target_embs=np.stack([target] * 5)))
    cos = emb @ target / np.linalg.norm(emb, axis=1) / np.linalg.norm(target)
    np.testing.assert_array_equal(out, ids[np.argsort(-cos, kind="stable")][:45])  # identical targets: one ranking


def test_utility_diversity_skips_near_duplicates():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20, 6))
    emb = np.concatenate([base, base + 1e-4])  # 20 pairs of near-duplicates
    util = np.concatenate([np.arange(20), np.arange(20) + 0.5]).astype(np.float32)  # the copy ranks first
    t = pa.table({"example_id": np.arange(40, dtype=np.int64), "quality": util, "emb": _vectors(emb)})
    out = get_selector("utility_diversity", threshold=0.99).select(t, 20)
    assert sorted(out.tolist()) == list(range(20, 40))  # one of each pair: the higher-utility copy
    np.testing.assert_array_equal(out, np.arange(39, 19, -1))
    full = get_selector("utility_diversity", threshold=0.99).select(t, 40)  # fewer than k pass: fill by utility
    assert sorted(full.tolist()) == list(range(40))


def test_lhas_concentration_term_spreads_over_declared_skills():
    t = make_features(400, seed=4)
    sel = get_selector("lhas", l_u=0.0, l_c=0.0, l_f=0.0, l_a=1.0, clusters="skill")
    out = sel.select(t, 40)
    skill = dict(zip(t.column("example_id").to_pylist(), t.column("skill").to_pylist(), strict=True))
    counts = np.unique([skill[i] for i in out.tolist()], return_counts=True)[1]
    np.testing.assert_array_equal(counts, [10, 10, 10, 10])


def test_lhas_uses_kmeans_clusters_by_default_not_the_skill_labels():
    """clusters 'auto' never reads the generating skill labels: the selection is the same with or without them."""
    t = make_features(400, seed=4)
    kw = dict(l_u=1.0, l_c=0.0, l_f=0.0, l_a=2.0, n_clusters=5)
    auto = get_selector("lhas", **kw)
    assert "skill" not in auto.requires and "skill" not in auto.optional
    with_labels = auto.select(t, 40)
    without = auto.select(t.drop_columns(["skill"]), 40)
    np.testing.assert_array_equal(with_labels, without)
    np.testing.assert_array_equal(with_labels, get_selector("lhas", clusters="kmeans", **kw).select(t, 40))
    relabelled = t.set_column(t.schema.get_field_index("skill"), "skill", pa.array(["x"] * 200 + ["y"] * 200))
    np.testing.assert_array_equal(auto.select(relabelled, 40), with_labels)


@pytest.mark.parametrize("clusters", ["auto", "skill"])
def test_lhas_concentration_acts_on_a_single_skill_pool(clusters, caplog):
    """A pool with one skill value (an HF source without columns.skill): l_a > 0 still changes the selection, through
    k-means clusters (with a warning where the config declared skill clusters)."""
    t = make_features(400, seed=5)
    t = t.set_column(t.schema.get_field_index("skill"), "skill", pa.array(["text"] * 400))
    off = get_selector("lhas", l_u=1.0, l_c=0.0, l_f=0.0, l_a=0.0, clusters=clusters).select(t, 40)
    with caplog.at_level("WARNING", logger="lhas_ray.selection.lhas"):
        on = get_selector("lhas", l_u=1.0, l_c=0.0, l_f=0.0, l_a=5.0, clusters=clusters, n_clusters=8).select(t, 40)
    assert set(on.tolist()) != set(off.tolist())
    assert ("single value" in caplog.text) == (clusters == "skill")


def test_requirements_follow_parameters():
    assert get_selector("lhas").requires == {"quality", "emb", "grad"}
    assert get_selector("lhas").context_fields == {"proxy_grad"}
    only_u = get_selector("lhas", l_c=0, l_f=0, l_a=0, utility="neg_loss")
    assert only_u.requires == {"loss"} and only_u.context_fields == frozenset()
    # declared skill clusters still need emb: a single-valued skill column falls back to k-means
    assert get_selector("lhas", l_u=0, l_c=0, l_f=0, clusters="skill").requires == {"skill", "emb"}
    assert get_selector("fl_utility", utility="el2n").requires == {"el2n", "emb"}
    assert get_selector("less").context_fields == {"target_grads"}
    assert get_selector("rds").context_fields == {"target_embs"}
    assert get_selector("random").requires == frozenset()


# ---------------------------------------------------------------- the optimiser


@st.composite
def instances(draw):
    """A random objective: points (often duplicated, so gains tie), optional utility, clusters and demand weights."""
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        emb = rng.integers(-2, 3, size=(n, d)).astype(np.float32)  # few distinct directions: many exact ties
    else:
        emb = rng.normal(size=(n, d)).astype(np.float32)
    k = draw(st.integers(1, n))
    kw = dict(
        emb=emb,
        knn=draw(st.integers(1, 12)),
        l_c=draw(st.sampled_from([0.0, 0.3, 1.0, 5.0])),
        l_a=draw(st.sampled_from([0.0, 0.5, 2.0])),
        modular=(rng.integers(0, 4, n) / 4.0) if draw(st.booleans()) else None,
        clusters=rng.integers(0, 3, n),
        demand_weights=rng.integers(1, 5, n) if draw(st.booleans()) else None,
    )
    if kw["l_c"] == 0 and kw["modular"] is None:
        kw["l_c"] = 1.0
    return k, n, kw


def reference_greedy(k: int, n: int, kw: dict) -> np.ndarray:
    """Naive greedy written independently of Objective: dense coverage matrix, every gain recomputed every step."""
    graph = similarity_graph(kw["emb"], kw["knn"])
    dense = np.zeros((n, n), dtype=np.int64)  # dense[i, j] = q of facility i for demand j
    for i in range(n):
        s, e = graph.indptr[i], graph.indptr[i + 1]
        dense[i, graph.demand[s:e]] = graph.q[s:e]
    w = np.ones(n, dtype=np.int64) if kw["demand_weights"] is None else kw["demand_weights"]
    fl_coef = kw["l_c"] * k / int(w.sum()) / QUANT
    conc_coef = kw["l_a"] / k
    modular = np.zeros(n) if kw["modular"] is None else kw["modular"]
    cover, counts, out = np.zeros(n, dtype=np.int64), np.zeros(3, dtype=np.int64), []
    for _ in range(k):
        best, best_g = -1, -np.inf
        for i in range(n):
            if i in out:
                continue
            fl = int((w * np.maximum(dense[i] - cover, 0)).sum())
            g = float(modular[i]) + fl_coef * fl - conc_coef * (2 * int(counts[kw["clusters"][i]]) + 1)
            if g > best_g:
                best, best_g = i, g
        out.append(best)
        cover = np.maximum(cover, dense[best])
        counts[kw["clusters"][best]] += 1
    return np.array(out, dtype=np.int64)


@FAST
@given(instances())
def test_lazy_greedy_equals_naive_greedy(inst):
    k, n, kw = inst
    lazy = lazy_greedy(build_objective(k, n, **kw), k)
    np.testing.assert_array_equal(lazy, naive_greedy(build_objective(k, n, **kw), k))
    np.testing.assert_array_equal(lazy, reference_greedy(k, n, kw))


@FAST
@given(instances(), st.sampled_from([0.01, 0.3]))
def test_stochastic_greedy_returns_distinct_picks(inst, eps):
    k, n, kw = inst
    out = stochastic_greedy(build_objective(k, n, **kw), k, eps, seed=1)
    assert len(set(out.tolist())) == k and out.min() >= 0 and out.max() < n


def test_objective_value_matches_its_definition():
    rng = np.random.default_rng(0)
    n, k = 30, 6
    emb, modular, clusters = rng.normal(size=(n, 3)), rng.random(n), rng.integers(0, 3, n)
    obj = build_objective(k, n, emb=emb, modular=modular, clusters=clusters, l_c=2.0, l_a=0.5, knn=n)
    picks = lazy_greedy(obj, k)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    fl = np.maximum((x @ x[picks].T).max(axis=1), 0).sum()  # knn = n: the graph holds every pair
    conc = k * ((np.bincount(clusters[picks], minlength=3) / k) ** 2).sum()
    expected = modular[picks].sum() + 2.0 * (k / n) * fl - 0.5 * conc
    assert obj.value() == pytest.approx(expected, rel=1e-6)


def test_facility_location_value_exact_and_sparse():
    t = make_features(80, d_emb=4)
    emb = np.asarray(t.column("emb").combine_chunks().flatten()).reshape(80, 4)
    ids = t.column("example_id").to_numpy()
    pick = [3, 50, 7]
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = np.maximum((x @ x[pick].T).max(axis=1), 0).sum()
    assert facility_location_value(t, ids[pick]) == pytest.approx(want, rel=1e-5)
    assert facility_location_value(emb, np.array(pick)) == pytest.approx(want, rel=1e-5)
    assert facility_location_value(emb, np.array(pick), knn=79) == pytest.approx(want, rel=1e-5)
    assert facility_location_value(emb, np.array(pick), knn=3) <= want + 1e-5  # a sparse graph only loses coverage
    with pytest.raises(ValueError, match="not in the features table"):
        facility_location_value(t, np.array([-1]))


def test_facility_location_selector_is_the_lazy_greedy_set(features):
    emb = np.asarray(features.column("emb").combine_chunks().flatten()).reshape(features.num_rows, -1)
    ids = features.column("example_id").to_numpy()
    order = np.argsort(ids)
    naive = naive_greedy(build_objective(30, len(ids), emb=emb[order], l_c=1.0, knn=32), 30)
    np.testing.assert_array_equal(get_selector("facility_location").select(features, 30), ids[order][naive])


def test_approximate_knn_graph_finds_true_neighbours():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16))
    emb = (centers[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    exact = similarity_graph(emb, 10)
    approx = similarity_graph(emb, 10, exact_limit=100)  # forces the IVF path
    fa = approx.demand.astype(np.int64) + 3000 * np.repeat(np.arange(3000), np.diff(approx.indptr))
    fe = exact.demand.astype(np.int64) + 3000 * np.repeat(np.arange(3000), np.diff(exact.indptr))
    assert np.isin(fe, fa).mean() > 0.95


# ---------------------------------------------------------------- k-center and LHAS properties


@FAST
@given(n=st.integers(2, 8), k=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), grid=st.booleans())
def test_kcenter_within_twice_the_optimum(n, k, seed, grid):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    emb = rng.integers(0, 3, size=(n, 2)).astype(np.float32) if grid else rng.normal(size=(n, 2)).astype(np.float32)
    t = pa.table({"example_id": np.arange(n, dtype=np.int64), "emb": _vectors(emb)})
    dist = np.linalg.norm(emb[:, None].astype(np.float64) - emb[None].astype(np.float64), axis=2)

    def radius(centers) -> float:
        return float(dist[:, list(centers)].min(axis=1).max())

    optimum = min(radius(c) for c in itertools.combinations(range(n), k))
    greedy = radius(get_selector("kcenter").select(t, k, SelectionContext(seed=seed % 1000)))
    assert greedy <= 2 * optimum + 1e-6


@FAST
@given(
    values=st.lists(st.integers(-2000, 2000), min_size=1, max_size=60),
    utility=st.sampled_from(["loss", "neg_loss", "quality", "el2n", "grad_norm"]),
    k_frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
)
def test_lhas_without_long_horizon_terms_is_top_k_utility(values, utility, k_frac, seed):
    n = len(values)
    k = max(1, int(round(k_frac * n)))
    ids = np.random.default_rng(seed).permutation(n * 3)[:n].astype(np.int64)
    col = {"loss": "loss", "neg_loss": "loss", "quality": "quality", "el2n": "el2n", "grad_norm": "grad_norm"}[utility]
    raw = np.asarray(values, dtype=np.float32) / 16
    t = pa.table({"example_id": ids, col: raw})
    u = -raw.astype(np.float64) if utility == "neg_loss" else raw.astype(np.float64)
    expected = ids[np.lexsort((ids, -u))][:k]
    sel = get_selector("lhas", l_u=2.5, l_c=0.0, l_f=0.0, l_a=0.0, utility=utility)
    np.testing.assert_array_equal(sel.select(t, k), expected)


# ---------------------------------------------------------------- GreeDi on Ray


def test_greedi_on_ray_matches_single_machine(ray_session):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(15, 8))
    n = 1200
    emb = centers[rng.integers(0, 15, n)] + 0.4 * rng.normal(size=(n, 8))
    t = pa.table({"example_id": np.arange(n, dtype=np.int64) * 2, "emb": _vectors(emb)})
    single = get_selector("facility_location").select(t, 30)
    dist = get_selector("facility_location", partitions=3).select(t, 30)
    assert len(set(dist.tolist())) == 30
    assert facility_location_value(t, dist) >= 0.9 * facility_location_value(t, single)
    np.testing.assert_array_equal(dist, get_selector("facility_location", partitions=3).select(t, 30))
    lhas = get_selector("lhas", l_f=0.0, partitions=2, utility="el2n")
    t2 = t.append_column("el2n", pa.array(rng.random(n).astype(np.float32)))
    assert len(set(lhas.select(t2, 30).tolist())) == 30


# ---------------------------------------------------------------- bad input


def _no_work(monkeypatch, sel) -> None:
    """Make any selection work fail loudly, so a test proves validation came first."""

    def fail(*args, **kwargs):
        raise AssertionError("selection work started on bad input")

    monkeypatch.setattr(type(sel), "_select", fail)


def _generic_bad(features: pa.Table) -> dict[str, tuple[pa.Table, object, str]]:
    ids = features.column("example_id").to_numpy().copy()
    ids[3] = ids[4]
    return {
        "k too large": (features, features.num_rows + 1, "larger than the pool"),
        "k zero": (features, 0, "k must be >= 1"),
        "k negative": (features, -3, "k must be >= 1"),
        "k not an int": (features, 2.5, "k must be an integer"),
        "empty pool": (features.slice(0, 0), 1, "empty"),
        "duplicate ids": (features.set_column(0, "example_id", pa.array(ids)), 5, "duplicate example_id"),
        "no example_id": (features.drop_columns(["example_id"]), 5, "no 'example_id'"),
    }


BAD_CASES = list(_generic_bad(make_features(30)))


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("name", available_selectors())
def test_bad_input_raises_before_any_work(case, name, context, monkeypatch):
    table, k, message = _generic_bad(make_features(30))[case]
    sel = get_selector(name)
    _no_work(monkeypatch, sel)
    with pytest.raises(ValueError, match=message):
        sel.select(table, k, context)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", available_selectors())
def test_non_finite_needed_column_raises(bad, name, context, monkeypatch):
    features = make_features(30)
    sel = get_selector(name)
    _no_work(monkeypatch, sel)
    for col in sorted(sel.requires - {"skill"}):
        i = features.column_names.index(col)
        if col in ("grad", "emb"):
            v = np.asarray(features.column(col).combine_chunks().flatten()).reshape(30, -1).copy()
            v[7, 1] = bad
            table = features.set_column(i, col, _vectors(v))
        else:
            v = features.column(col).to_numpy().copy()
            v[7] = bad
            table = features.set_column(i, col, pa.array(v))
        with pytest.raises(ValueError, match=f"column '{col}' has NaN or inf in 1 row"):
            sel.select(table, 5, context)
        with pytest.raises(ValueError, match=f"selector '{name}' needs column '{col}' which the features table lacks"):
            sel.select(features.drop_columns([col]), 5, context)


def test_missing_column_is_named(features, context):
    with pytest.raises(ValueError, match="selector 'lhas' needs column 'grad' which the features table lacks"):
        get_selector("lhas").select(features.drop_columns(["grad"]), 5, context)
    with pytest.raises(ValueError, match="selector 'loss_high' needs column 'loss'"):
        get_selector("loss_high").select(features.select(["example_id", "emb"]), 5)


def test_missing_context_is_named(features, context):
    with pytest.raises(ValueError, match="needs context.proxy_grad"):
        get_selector("lhas").select(features, 5)
    with pytest.raises(ValueError, match="needs context.target_grads"):
        get_selector("less").select(features, 5, SelectionContext(target_embs=context.target_embs))
    with pytest.raises(ValueError, match="context.target_embs has dimension 3"):
        get_selector("rds").select(features, 5, SelectionContext(target_embs=np.ones((2, 3))))
    with pytest.raises(ValueError, match="context.proxy_grad has NaN"):
        get_selector("lhas").select(features, 5, SelectionContext(proxy_grad=np.full(8, np.nan)))


def test_bad_names_and_params_are_named():
    with pytest.raises(ValueError, match="unknown selector 'nope'.*available selectors"):
        get_selector("nope")
    with pytest.raises(ValueError, match="selector 'lhas' parameter 'lambda_u': no such parameter; allowed parameters"):
        get_selector("lhas", lambda_u=1.0)
    with pytest.raises(ValueError, match=r"selector 'lhas' parameter 'l_a': must be a finite float in \[0.0, inf\)"):
        get_selector("lhas", l_a=-1.0)
    with pytest.raises(ValueError, match="selector 'lhas' parameter 'utility': must be one of"):
        get_selector("lhas", utility="vibes")
    with pytest.raises(ValueError, match="parameter 'greedy': must be one of"):
        get_selector("facility_location", greedy="eager")
    with pytest.raises(ValueError, match="parameter 'knn': must be an integer >= 1"):
        get_selector("fl_utility", knn=0)
    with pytest.raises(ValueError, match="at least one must be > 0"):
        get_selector("lhas", l_u=0, l_c=0, l_f=0, l_a=0)
    with pytest.raises(ValueError, match="parameter 'threshold'"):
        get_selector("utility_diversity", threshold=1.5)
    with pytest.raises(
        ValueError, match="selector 'loss_high' parameter 'seed': no such parameter; allowed parameters: none"
    ):
        get_selector("loss_high", seed=1)


def test_vectors_read_zero_copy_and_sliced_tables_align():
    t = make_features(50, ids=np.arange(50, dtype=np.int64))
    pool = validate_features(t, 5, {"grad", "emb"})
    assert not pool["grad"].flags.owndata  # a view on the Arrow buffer, not a copy
    part = t.slice(10, 20)
    sub = validate_features(part, 5, {"emb"})
    full = np.asarray(t.column("emb").combine_chunks().flatten()).reshape(50, -1)
    np.testing.assert_array_equal(sub["emb"], full[10:30])
    np.testing.assert_array_equal(sub.example_id, np.arange(10, 30))
