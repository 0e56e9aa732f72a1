"""Search spaces and objective formulas: every packaged space loads, every bad space names its key, formulas read
trajectory metrics at the right stage, Pareto sets and parameter importances."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import lhas_ray
from lhas_ray.evaluation.formulas import parse_formula, stage_scores
from lhas_ray.evaluation.ranking import pareto_mask
from lhas_ray.selection.lhas import LHAS
from lhas_ray.tuning.results import param_importances
from lhas_ray.tuning.space import SearchSpaceError, load_search_space, parse_search_space

SPACES = sorted((Path(lhas_ray.__file__).resolve().parent / "search_spaces").glob("*.yaml"))


def test_packaged_spaces_load_and_name_lhas_parameters():
    assert {p.name for p in SPACES} >= {"lhas_default.yaml", "lhas_wide.yaml"}
    for path in SPACES:
        space = load_search_space(path)
        assert set(space.params) <= set(LHAS.params), path  # every name is a parameter of the lhas selector
        # at least three of the four weights; lhas_paper leaves l_u at the config's value, since J is invariant to
        # scaling every weight alike (the others are then ratios to it)
        assert len({"l_u", "l_c", "l_f", "l_a"} & set(space.params)) >= 3, path
        dists = space.distributions()
        assert all(isinstance(d, optuna.distributions.BaseDistribution) for d in dists.values())
    wide = load_search_space("lhas_wide").distributions()  # a bare name finds lhas_ray/search_spaces/NAME.yaml
    assert wide["l_u"].log and isinstance(wide["utility"], optuna.distributions.CategoricalDistribution)
    assert wide["n_clusters"].log and wide["n_clusters"].low == 4


@pytest.mark.parametrize(
    "params, message",
    [
        ({"l_x": {"type": "uniform", "low": 0, "high": 1}}, "params.l_x: 'lhas' has no parameter 'l_x'"),
        ({"l_u": {"type": "gaussian", "low": 0, "high": 1}}, "params.l_u.type: must be one of"),
        ({"l_u": {"type": "uniform", "low": 2, "high": 1}}, "params.l_u: low (2.0) must be smaller than high (1.0)"),
        ({"l_u": {"type": "uniform", "low": -1, "high": 1}}, "params.l_u.low: -1.0 is not a valid lhas 'l_u'"),
        ({"l_u": {"type": "loguniform", "low": 0, "high": 1}}, "params.l_u.low: must be > 0"),
        ({"l_u": {"type": "uniform", "low": 0}}, "params.l_u: missing key(s) ['high']"),
        ({"l_u": {"type": "uniform", "low": 0, "high": 1, "step": 2}}, "params.l_u: unknown key(s) ['step']"),
        ({"n_clusters": {"type": "int", "low": 1.5, "high": 4}}, "params.n_clusters: low and high must be integers"),
        ({"n_clusters": {"type": "int", "low": 2, "high": 9, "step": 2}}, "must be a multiple of step (2)"),
        ({"utility": {"type": "choice", "values": []}}, "params.utility.values: must be a non-empty list"),
        ({"utility": {"type": "choice", "values": ["quality", "magic"]}}, "params.utility.values: 'magic' is not"),
        ({"utility": {"type": "choice", "values": ["loss", "loss"]}}, "params.utility.values: must be distinct"),
        ({"l_u": 0.5}, "params.l_u: must be a mapping"),
    ],
)
def test_bad_spaces_name_the_key(params, message):
    with pytest.raises(SearchSpaceError) as e:
        parse_search_space({"params": params}, "bad.yaml")
    assert message in str(e.value) and "bad.yaml" in str(e.value)


def test_bad_space_files(tmp_path):
    with pytest.raises(SearchSpaceError, match="not found"):
        load_search_space(tmp_path / "missing.yaml")
    (tmp_path / "s.yaml").write_text("params: [l_u]\n")
    with pytest.raises(SearchSpaceError, match="params: must be a non-empty mapping"):
        load_search_space(tmp_path / "s.yaml")
    (tmp_path / "t.yaml").write_text("params: {l_u: {type: uniform, low: 0, high: 1}}\nweights: 1\n")
    with pytest.raises(SearchSpaceError, match="weights: unknown key"):
        load_search_space(tmp_path / "t.yaml")
    (tmp_path / "u.yaml").write_text("params: {l_u: [\n")
    with pytest.raises(SearchSpaceError, match="not valid YAML"):
        load_search_space(tmp_path / "u.yaml")


def _trajectory(rows: dict[int, dict[str, float]], seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"selector": "lhas", "seed": seed, "stage": t, "metric": m, "value": v}
            for t, metrics in rows.items()
            for m, v in metrics.items()
        ]
    )


def test_formula_reads_latest_mean_first_and_counts_undefined_as_zero():
    # 3 stages: forgetting is undefined at stage 1, lca at the last stage (DESIGN.md).
    traj = _trajectory(
        {
            1: {"immediate": 0.6, "acc": 0.6, "lca": 0.2},
            2: {"immediate": 0.5, "acc": 0.4, "forgetting": 0.3, "lca": 0.4},
            3: {"immediate": 0.7, "acc": 0.5, "forgetting": 0.1},
        }
    )
    formulas = {
        "objective": parse_formula("acc - forgetting + mean_lca"),
        "immediate_score": parse_formula("first_immediate"),
        "raw": parse_formula("2 * (lca - -1) / 4"),
    }
    s = stage_scores(traj, formulas).loc[0]
    np.testing.assert_allclose(s["objective"].to_numpy(), [0.6 - 0 + 0.2, 0.4 - 0.3 + 0.3, 0.5 - 0.1 + 0.3])
    np.testing.assert_allclose(s["immediate_score"].to_numpy(), [0.6, 0.6, 0.6])
    np.testing.assert_allclose(s["raw"].to_numpy(), [0.6, 0.7, 0.7])  # lca carried forward to the last stage
    assert math.isnan(s.loc[1, "forgetting"]) and s.loc[3, "lca"] == 0.4  # metric columns: NaN until defined


def test_formula_division_by_zero_is_nan_not_an_exception():
    traj = _trajectory({1: {"acc": 0.0}})
    s = stage_scores(traj, {"objective": parse_formula("acc / acc")})
    assert math.isnan(s["objective"].iloc[0])


@pytest.mark.parametrize(
    "text, message",
    [
        ("acc - accuracy", "unknown name 'accuracy'"),
        ("acc ** 2", "operator Pow is not allowed"),
        ("max(acc, lca)", "Call is not allowed"),
        ("acc -", "is not a formula"),
        ("acc if lca else 0", "IfExp is not allowed"),
        ("'acc'", "only finite numbers"),
        ("  ", "must be a non-empty formula"),
    ],
)
def test_bad_formulas(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_formula(text, "tune.objective")


def test_pareto_mask_keeps_non_dominated_rows():
    v = np.array([[0.1, 0.9], [0.5, 0.5], [0.4, 0.4], [0.9, 0.1], [np.nan, 1.0], [0.5, 0.5]])
    assert pareto_mask(v).tolist() == [True, True, False, True, False, True]


def test_param_importances_find_the_parameter_that_matters():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 2, 40), rng.uniform(0, 2, 40)
    trials = pd.DataFrame({"param_l_u": a, "param_l_c": b, "objective": 3 * a + 0.01 * b, "status": ["completed"] * 40})
    imp = param_importances(trials)
    assert set(imp.index) == {"l_u", "l_c"} and imp["l_u"] > 0.9
    assert param_importances(trials.head(2)).empty  # too few trials: nothing to say


def test_search_spaces_and_configs_resolve_from_an_installed_wheel(tmp_path):
    """A non-editable install (the wheel setuptools builds) carries the packaged spaces and configs."""
    repo = Path(lhas_ray.__file__).resolve().parent.parent
    src, target = tmp_path / "src", tmp_path / "site"  # built from a copy: setuptools writes build/ beside the source
    shutil.copytree(repo / "lhas_ray", src / "lhas_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    subprocess.run([*pip, str(src)], check=True, cwd=tmp_path, capture_output=True)
    probe = (
        "import lhas_ray, sys; from lhas_ray.tuning.space import load_search_space; from lhas_ray.config import load_config\n"
        "assert lhas_ray.__file__.startswith(sys.argv[1]), lhas_ray.__file__\n"
        "for name in ('lhas_default', 'search_spaces/lhas_paper.yaml'): load_search_space(name)\n"
        "load_config('paper'); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(target)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
