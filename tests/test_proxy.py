"""LHAS's future proxy: under 'replay' it holds only the warm-up mixture and the stages already trained."""

from __future__ import annotations

import numpy as np
import pytest

from lhas_ray.config import load_config
from lhas_ray.tasks.suite import build_suite


def _ids(table) -> set[int]:
    return set(table.column("example_id").to_pylist())


@pytest.mark.parametrize("name", ["demo", "study"])
def test_replay_proxy_holds_no_data_of_this_or_a_later_stage(name):
    suite = build_suite(load_config(name))
    warm = _ids(suite.warmup)
    n = suite.proxy.num_rows
    for t in range(1, len(suite.stages) + 1):
        proxy = suite.future_proxy("replay", t)
        ids = _ids(proxy)
        assert proxy.num_rows == n and len(ids) == n
        past = set().union(*(_ids(s.probe) for s in suite.stages if s.index < t))
        assert ids <= warm | past
        for s in suite.stages[t - 1 :]:  # stage t and later: no row of any of their sets
            for table in (s.pool, s.eval, s.probe, *s.ood.values()):
                assert not ids & _ids(table), (t, s.index)
        # each stage already trained gives an equal share of half the set, at most its probe sample
        for s in suite.stages[: t - 1]:
            share = (n // 2) // (t - 1)
            assert abs(len(ids & _ids(s.probe)) - min(share, s.probe.num_rows)) <= 1, (t, s.index)
    again = build_suite(load_config(name)).future_proxy("replay", 3)
    assert again.equals(suite.future_proxy("replay", 3))


def test_broad_proxy_is_the_mixture_of_every_skill_and_unknown_kinds_fail():
    suite = build_suite(load_config("demo"))
    broad = suite.future_proxy("broad", 2)
    assert broad.equals(suite.proxy)
    from lhas_ray.tasks.builtin import SKILLS

    assert set(np.unique(broad.column("skill").to_numpy(zero_copy_only=False))) == set(SKILLS)
    with pytest.raises(ValueError, match="unknown future proxy"):
        suite.future_proxy("oracle", 1)


def test_the_study_runs_lhas_under_both_proxies_with_the_same_weights():
    lhas = [s for s in load_config("study").selectors if s.name == "lhas"]
    assert sorted(s.params["proxy"] for s in lhas) == ["broad", "replay"]
    weights = [{k: v for k, v in s.params.items() if k != "proxy"} for s in lhas]
    assert weights[0] == weights[1]  # only the proxy differs, so the study compares proxies and nothing else
