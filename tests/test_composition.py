"""What each selector picked: role shares, skill shares and overlap, against counts done by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lhas_ray.evaluation.composition import composition, composition_table, jaccard, read_selections
from lhas_ray.schemas import SELECTIONS
from lhas_ray.store import ResultStore, Unit


def _rows(selector, seed, stage, ids, tags, skills=None):
    return pd.DataFrame(
        {
            "selector": selector,
            "seed": seed,
            "stage": stage,
            "order": range(len(ids)),
            "example_id": ids,
            "skill": skills or ["reverse"] * len(ids),
            "tags": tags,
        }
    )


def test_role_shares_sum_to_one_and_flags_are_counted_on_their_own():
    sel = pd.concat(
        [
            # 4 rows: 2 target (one a duplicate), 1 related and noisy, 1 unrelated
            _rows("a", 0, 1, [1, 2, 3, 4], [["target"], ["target", "duplicate"], ["related", "noise"], ["unrelated"]]),
            _rows("a", 1, 1, [1, 5], [["target"], ["related"]]),
        ]
    )
    shares = composition(sel).set_index(["seed", "kind"])["share"]
    assert shares[(0, "target")] == 0.5 and shares[(0, "related")] == 0.25 and shares[(0, "unrelated")] == 0.25
    assert shares[(0, "noise")] == 0.25 and shares[(0, "duplicate")] == 0.25
    assert shares[(1, "target")] == 0.5 and shares[(1, "noise")] == 0.0
    roles = composition(sel).query("kind in ['target', 'related', 'unrelated']").groupby("seed")["share"].sum()
    assert np.allclose(roles, 1.0)
    table = composition_table(composition(sel)).set_index("selector")
    assert table.loc["a", "s1 target"] == 50 and table.loc["a", "s1 related"] == pytest.approx(38)  # (25+50)/2


def test_pools_without_roles_are_described_by_skill():
    sel = _rows("b", 0, 2, [7, 8, 9], [["hf:code"]] * 3, skills=["code", "code", "docs"])
    shares = composition(sel).set_index("kind")["share"]
    assert shares["code"] == pytest.approx(2 / 3) and shares["docs"] == pytest.approx(1 / 3)


def test_jaccard_by_hand_and_averaged_over_the_seeds_both_ran():
    sel = pd.concat(
        [
            _rows("a", 0, 1, [1, 2, 3, 4], [["target"]] * 4),
            _rows("b", 0, 1, [3, 4, 5, 6], [["target"]] * 4),  # 2 shared of 6: 1/3
            _rows("a", 1, 1, [1, 2], [["target"]] * 2),
            _rows("b", 1, 1, [1, 2], [["target"]] * 2),  # the same: 1
            _rows("c", 1, 1, [9], [["target"]]),  # c ran seed 1 only
        ]
    )
    J = jaccard(sel)[1]
    assert J.loc["a", "b"] == pytest.approx((1 / 3 + 1) / 2) and J.loc["b", "a"] == J.loc["a", "b"]
    assert J.loc["a", "c"] == 0.0 and J.loc["c", "c"] == 1.0


def test_read_selections_takes_committed_units_only(tmp_path):
    store = ResultStore(str(tmp_path))
    table = pa.table(
        {"example_id": [3, 1], "skill": ["sort", "sort"], "tags": [["target"], ["related"]], "order": [0, 1]},
        schema=SELECTIONS,
    )
    for t in (1, 2):
        store.write_parquet(f"selections/lhas/s0/stage{t}.parquet", table)
    store.commit(Unit("lhas", 0, 0))
    store.commit(Unit("lhas", 0, 1))  # stage 2's selection exists but its unit is not committed
    got = read_selections(store, label="t001")
    assert got["stage"].tolist() == [1, 1] and got["example_id"].tolist() == [3, 1] and set(got.selector) == {"t001"}
