"""Held-out confirmation: configs refused before Ray, the confirm config, the tests against hand computations, and a
sweep + confirmation (stand-in protocol and runner) in which the held-out seeds and data draws never reach the sweep."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys

import numpy as np
import pandas as pd
import pytest
import ray.cloudpickle
from scipy import stats as sps

from lhas_ray import cli
from lhas_ray.config import ConfigError, config_from_dict, load_config
from lhas_ray.launch import build_suites
from lhas_ray.tuning.confirm import (
    CONFIRM_CONFIG,
    IMMEDIATE,
    OBJECTIVE,
    TUNED,
    best_myopic,
    check_unseen,
    confirm,
    confirm_config,
    confirmation_table,
)
from lhas_ray.tuning.space import parse_search_space
from lhas_ray.tuning.sweep import run_sweep
from tests.helpers import fake_protocol, sweep_config
from tests.synthetic_run import build_synthetic_run

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the recording protocol runs inside Tune trials


def confirm_raw(**tune) -> dict:
    raw = sweep_config(**tune)
    raw["selectors"] = [{"name": "random"}, {"name": "loss_high"}, {"name": "lhas", "params": {"knn": 16}}]
    raw["seeds"] = [0, 1]
    raw["tune"].update({"heldout_seeds": [10, 11], "confirm_baselines": ["random"], **tune})
    return raw


# --- refused before any Ray work --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tune, message",
    [
        ({"heldout_seeds": [1, 10]}, "tune.heldout_seeds: [1] are also development seeds"),
        ({"heldout_seeds": [10, 10]}, "tune.heldout_seeds: seeds must be distinct"),
        ({"confirm_baselines": ["kcenter"]}, "tune.confirm_baselines: ['kcenter'] are not non-lhas selectors"),
        ({"confirm_baselines": ["lhas"]}, "tune.confirm_baselines: ['lhas'] are not non-lhas selectors"),
    ],
)
def test_a_heldout_seed_that_is_also_tuned_on_is_refused(tune, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(confirm_raw(**tune))


def test_a_config_with_nothing_but_lhas_has_nothing_to_confirm_against():
    raw = confirm_raw(confirm_baselines=[])
    raw["selectors"] = [{"name": "lhas"}]
    with pytest.raises(ConfigError, match="nothing to confirm against"):
        config_from_dict(raw)


def test_confirm_refuses_a_folder_without_a_finished_sweep(tmp_path, capsys):
    assert cli.main(["confirm", str(tmp_path / "nothing")]) == 2
    assert "holds no sweep" in capsys.readouterr().err


# --- the confirm config and the unseen check --------------------------------------------------------------------------
def test_the_confirm_config_is_the_best_config_on_heldout_seeds_with_fresh_draws():
    best = config_from_dict(confirm_raw())
    ccfg = confirm_config(best, "lhas", ["random", "loss_high"], [10, 11])
    assert [s.key for s in ccfg.selectors] == [TUNED, "random", "loss_high"]
    assert ccfg.selector(TUNED).name == "lhas" and ccfg.selector(TUNED).params == {"knn": 16}
    assert ccfg.seeds == [10, 11] and ccfg.data.resample == "per_seed"
    assert ccfg.tune.development_seeds == [0, 1] and ccfg.tune.heldout_seeds == []
    assert ccfg.evaluation.baselines == ["random", "loss_high"]
    assert ccfg.training == best.training and ccfg.stages == best.stages
    dev_draws = {best.data_seed(s) for s in best.seeds}  # fixed resample: one draw, data.seed
    assert dev_draws == {0} and not dev_draws & {ccfg.data_seed(s) for s in ccfg.seeds}
    check_unseen(best, ccfg)  # nothing shared: no error


def test_a_confirmation_that_would_reuse_a_development_draw_is_refused():
    best = config_from_dict(confirm_raw())
    raw = confirm_config(best, "lhas", ["random"], [10, 11]).model_dump(mode="json")
    raw["data"]["resample"] = "fixed"  # every held-out seed would read the sweep's own draw
    with pytest.raises(ConfigError, match=r"held-out seeds \[10, 11\] would draw the same data"):
        check_unseen(best, config_from_dict(raw))


# --- the tests, against hand computations -----------------------------------------------------------------------------
def _scores(values: dict[str, list[float]], metric_values: dict[str, dict[str, list[float]]] | None = None):
    """A seed_scores-shaped frame: objective per selector and seed, other columns from metric_values or 0."""
    rows = []
    for sel, vals in values.items():
        for seed, v in enumerate(vals):
            row = {"selector": sel, "seed": seed, OBJECTIVE: v}
            for m, per in (metric_values or {}).items():
                row[m] = per[sel][seed]
            rows.append(row)
    df = pd.DataFrame(rows)
    for m in (IMMEDIATE, "acc", "forgetting", "untrained_retention", "lca"):
        if m not in df:
            df[m] = 0.0
    return df.set_index(["selector", "seed"])


def _sign_flip_by_hand(d: np.ndarray, alternative: str) -> float:
    obs = d.sum()
    sums = np.array([np.dot(s, d) for s in itertools.product([-1, 1], repeat=len(d))])
    if alternative == "greater":
        return float(np.mean(sums >= obs - 1e-12))
    return float(np.mean(np.abs(sums) >= abs(obs) - 1e-12))


def test_the_headline_is_one_sided_and_holm_adjusted_over_the_baselines():
    tuned = [0.50, 0.55, 0.52, 0.58, 0.61, 0.49]
    rnd = [0.40, 0.41, 0.45, 0.47, 0.50, 0.44]
    myo = [0.52, 0.50, 0.53, 0.55, 0.57, 0.51]
    forget = {TUNED: [0.1, 0.2, 0.1, 0.3, 0.1, 0.2], "random": [0.2] * 6, "myo": [0.3, 0.2, 0.4, 0.1, 0.2, 0.3]}
    scores = _scores({TUNED: tuned, "random": rnd, "myo": myo}, {"forgetting": forget})
    table = confirmation_table(scores, TUNED, {"random": "random", "myo": "best myopic"})
    head = table[table["family"] == "headline"].set_index("baseline")
    p = {b: _sign_flip_by_hand(np.subtract(tuned, x), "greater") for b, x in (("random", rnd), ("myo", myo))}
    assert p["random"] == 1 / 64  # every difference positive: only the identity pattern reaches the observed sum
    assert head.loc["random", "p_raw"] == pytest.approx(p["random"])
    assert head.loc["myo", "p_raw"] == pytest.approx(p["myo"])
    lo_p, hi_p = sorted(p.values())  # Holm over the two: 2 * smallest, then max(that, largest)
    adjusted = {b: (2 * lo_p if p[b] == lo_p else max(2 * lo_p, hi_p)) for b in p}
    for b in p:
        assert head.loc[b, "p_holm"] == pytest.approx(min(1.0, adjusted[b]))
    d = np.subtract(tuned, myo)
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert head.loc["myo", "diff"] == pytest.approx(d.mean())
    assert (head.loc["myo", "lo"], head.loc["myo", "hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    metrics = table[table["family"] == "metrics"]
    assert len(metrics) == 2 * 5 and set(metrics["alternative"]) == {"two-sided"}
    f = metrics[(metrics["metric"] == "forgetting") & (metrics["baseline"] == "myo")].iloc[0]
    df = np.subtract(forget[TUNED], forget["myo"])
    assert f["diff"] == pytest.approx(df.mean()) and not f["higher_is_better"]
    assert f["p_raw"] == pytest.approx(_sign_flip_by_hand(df, "two-sided"))
    raw = metrics["p_raw"].to_numpy()
    order = np.argsort(raw)
    holm = np.maximum.accumulate(np.minimum(1, raw[order] * (len(raw) - np.arange(len(raw)))))
    np.testing.assert_allclose(metrics["p_holm"].to_numpy()[order], holm)


def test_seeds_are_paired_and_in_sample_rows_are_never_tested():
    scores = _scores({TUNED: [0.5, 0.6, 0.7], "random": [0.4, 0.5, math.nan]})
    table = confirmation_table(scores, TUNED, {"random": "random"}, in_sample=scores)
    head = table[(table["family"] == "headline")].iloc[0]
    assert head["n_seeds"] == 2 and head["diff"] == pytest.approx(0.1)  # seed 2 has no baseline value: left out
    assert head["tuned"] == pytest.approx(0.55)
    ins = table[table["sample"] == "in-sample"]
    assert len(ins) == 6 and ins["p_raw"].isna().all() and (ins["family"] == "").all()


def test_the_best_myopic_selector_is_the_best_immediate_one_random_aside():
    scores = _scores({"random": [0] * 3, "a": [0] * 3, "b": [0] * 3})
    scores[IMMEDIATE] = [0.9, 0.9, 0.9, 0.3, 0.4, 0.5, 0.5, 0.4, 0.45]  # random best, then b (0.45) over a (0.4)
    assert best_myopic(scores) == "b"
    assert best_myopic(scores.loc[["random"]]) is None  # random is no myopic selector


# --- a sweep and its confirmation: the held-out seeds never reach the sweep -------------------------------------------
def recording_protocol(cfg, out, data, group, fixed, name, callbacks, verbose=False):
    """fake_protocol, and a record of every seed and eval prompt the trial was handed."""
    seen = {
        "cfg_seeds": list(cfg.seeds),
        "group_seeds": sorted({seed for _, seed in group}),
        "suite_seeds": sorted(data.suites),
        "prompts": sorted(
            {p for s in data.suites.values() for st in s.stages for p in st.eval.column("prompt").to_pylist()}
        ),
    }
    with open(os.path.join(out, "seen.json"), "w") as f:
        json.dump(seen, f)
    fake_protocol(cfg, out, data, group, fixed, name, callbacks)


def synthetic_runner(record: list):
    """A stand-in for run_experiment: a synthetic run of the config's selectors and seeds, and a record of them."""

    def run(cfg, out, address):
        record.append({"seeds": list(cfg.seeds), "draws": [cfg.data_seed(s) for s in cfg.seeds], "cfg": cfg})
        keys = [s.key for s in cfg.selectors]
        build_synthetic_run(
            out, selectors=keys, seeds=cfg.seeds, n_stages=len(cfg.stages), config=cfg.model_dump(mode="json")
        )

    return run


def test_heldout_seeds_and_draws_never_reach_the_sweep(ray_session, tmp_path):
    raw = confirm_raw(trials=2, max_concurrent=2)
    raw["data"]["resample"] = "per_seed"
    cfg = config_from_dict(raw)
    space = parse_search_space({"params": {"l_u": {"type": "choice", "values": [1.0, 1.5]}}})
    out = str(tmp_path / "sweep")
    result = run_sweep(cfg, space, out, protocol=recording_protocol)
    assert (result.trials["status"] == "completed").all()
    record: list = []
    conf = confirm(out, runner=synthetic_runner(record))

    seen = [json.load(open(os.path.join(out, r, "seen.json"))) for r in result.trials["run"]]
    for s in seen:  # every trial was handed the development seeds, and only those
        assert s["cfg_seeds"] == s["group_seeds"] == s["suite_seeds"] == [0, 1]
    baselines_run, confirm_run = record
    assert baselines_run["seeds"] == [0, 1] and confirm_run["seeds"] == [10, 11]
    assert not set(confirm_run["draws"]) & {cfg.data_seed(s) for s in cfg.seeds}
    heldout_suites = build_suites(confirm_run["cfg"])  # the held-out eval sets: drawn afresh, not the sweep's
    heldout_prompts = {
        p for s in heldout_suites.values() for st in s.stages for p in st.eval.column("prompt").to_pylist()
    }
    assert heldout_prompts != set(seen[0]["prompts"])

    # the confirm config on disk is what ran, and `lhas-ray run` accepts it as is
    on_disk = load_config(os.path.join(out, CONFIRM_CONFIG))
    assert on_disk.model_dump() == confirm_run["cfg"].model_dump()
    assert [s.key for s in on_disk.selectors][0] == TUNED
    best = load_config(os.path.join(out, "best_config.yaml"))
    assert on_disk.selector(TUNED).params == best.selector("lhas").params
    assert set(conf.baselines) == {"random", "loss_high"}  # random, and the best myopic of the two baselines
    table = pd.read_parquet(os.path.join(out, "confirmation.parquet"))
    held = table[table["sample"] == "held-out"]
    assert set(held["n_seeds"]) == {2} and set(held["family"]) == {"headline", "metrics"}
    assert set(table["sample"]) == {"held-out", "in-sample"}
    # the sweep's report gains the section, and says which numbers are which
    assert cli.main(["report", out]) == 0
    page = open(os.path.join(out, "report.html")).read()
    assert "<section id='confirmation'>" in page and "[held-out]" in page and "[in-sample]" in page


def test_a_heldout_run_that_uses_a_development_seed_is_refused():
    raw = confirm_config(config_from_dict(confirm_raw()), "lhas", ["random"], [10, 11]).model_dump(mode="json")
    raw["seeds"] = [1, 10]
    with pytest.raises(ConfigError, match=r"seeds: \[1\] are tune.development_seeds"):
        config_from_dict(raw)


# --- an immediate floor: the baselines first, then the best objective among the trials that keep it -------------------
IMMEDIATE_BY_LU = {0.5: 0.6, 1.5: 0.2}  # lhas's R[t, t] by l_u: l_u 1.5 learns less now ...
LATER_BY_LU = {0.5: 0.3, 1.5: 0.9}  # ... and keeps more of the other stages (R[t, j], j != t)


def _commit_matrix(out, group, n, now: float, later: float) -> None:
    """Commit every unit of ``group`` with R[t, t] = now and R[t, j] = later (j != t); stage 0 all ``later``."""
    import pyarrow as pa

    from lhas_ray.store import ResultStore, Unit

    store = ResultStore(out)
    cols = ["selector", "seed", "stage", "eval_set", "eval_stage", "skill", "metric", "value"]
    for selector, seed in group:
        for t in range(n + 1):
            rows = [
                (selector, seed, t, f"eval/stage{j}", j, "all", "accuracy", now if j == t else later)
                for j in range(1, n + 1)
            ]
            store.write_part(
                "metrics", Unit(selector, seed, t), pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})
            )
            store.commit(Unit(selector, seed, t))


def tradeoff_protocol(cfg, out, data, group, fixed, name, callbacks, verbose=False):
    """A trial whose immediate score and later accuracy trade off through l_u (``IMMEDIATE_BY_LU``/``LATER_BY_LU``)."""
    lu = cfg.selectors[0].params["l_u"]
    _commit_matrix(out, group, len(cfg.stages), IMMEDIATE_BY_LU[lu], LATER_BY_LU[lu])


def test_an_immediate_floor_keeps_the_best_trial_within_tolerance_of_the_best_myopic(ray_session, tmp_path):
    # baselines: random R[t, t] = 0.1, loss_high R[t, t] = 0.5 (the best myopic); floor = 0.5 - 0.1 = 0.4
    raw = confirm_raw(trials=2, max_concurrent=2, objective="acc", immediate="first_immediate", immediate_tolerance=0.1)
    cfg = config_from_dict(raw)
    space = parse_search_space({"params": {"l_u": {"type": "choice", "values": [0.5, 1.5]}}})
    out = str(tmp_path / "sweep")
    order: list = []

    def baselines(bcfg, bout, address):
        order.append(("baselines", os.path.exists(os.path.join(out, "trials")), list(bcfg.seeds)))
        for s in bcfg.selectors:
            now = {"random": 0.1, "loss_high": 0.5}[s.key]
            _commit_matrix(bout, [(s.key, seed) for seed in bcfg.seeds], len(bcfg.stages), now, 0.2)

    result = run_sweep(cfg, space, out, protocol=tradeoff_protocol, baseline_runner=baselines)
    assert order == [("baselines", False, [0, 1])]  # before any trial, on the development seeds
    assert result.config.tune.immediate_floor == pytest.approx(0.4)
    t = result.trials.set_index("param_l_u")
    assert (t["status"] == "completed").all()
    assert {"acc", "forgetting"} <= set(t.columns) and not [c for c in t.columns if c.startswith("lm_eval")]  # off
    # by hand, 2 stages: acc at stage 2 = (R[2,1] + R[2,2]) / 2
    assert t.loc[1.5, "objective"] == pytest.approx((0.9 + 0.2) / 2) and t.loc[0.5, "objective"] == pytest.approx(0.45)
    assert t.loc[1.5, "immediate_score"] == pytest.approx(0.2) and t.loc[0.5, "immediate_score"] == pytest.approx(0.6)
    assert t.loc[1.5, "constrained_objective"] == pytest.approx(0.55 - 10 * (0.4 - 0.2))
    assert t.loc[0.5, "constrained_objective"] == pytest.approx(0.45)
    # the higher objective is below the floor: the best trial is the feasible one, and best_config.yaml says why
    assert result.best["param_l_u"] == 0.5
    text = open(os.path.join(out, "best_config.yaml")).read()
    assert "1 of 2 completed trials kept immediate_score >= the floor 0.4000" in text
    assert load_config(os.path.join(out, "best_config.yaml")).tune.immediate_floor == pytest.approx(0.4)
    # the confirmation's step 1 is the same baseline folder (a real run resumes it: nothing is left to run)
    record: list = []
    confirm(out, runner=synthetic_runner(record))
    assert [r["seeds"] for r in record] == [[0, 1], [10, 11]]


def test_an_unconstrained_sweep_keeps_the_best_objective_whatever_its_immediate_score():
    from lhas_ray.tuning.results import best_trial

    cfg = config_from_dict(confirm_raw())
    done = pd.DataFrame({"trial": ["a", "b"], "objective": [0.45, 0.55], "immediate_score": [0.6, 0.2]})
    assert best_trial(done, done, cfg)[0]["trial"] == "b"
    floored = config_from_dict({**confirm_raw(), "tune": {**confirm_raw()["tune"], "immediate_floor": 0.7}})
    done["constrained_objective"] = [0.45 - 10 * 0.1, 0.55 - 10 * 0.5]  # nobody at 0.7: the least penalised
    best, why = best_trial(done, done, floored)
    assert best["trial"] == "a" and "no completed trial kept immediate_score >= the floor 0.7000" in why


@pytest.mark.parametrize(
    "tune, message",
    [
        ({"immediate_tolerance": 0.05, "multi_objective": True}, "tune.multi_objective: a multi-objective sweep"),
        ({"immediate_tolerance": -0.1}, "tune.immediate_tolerance"),
    ],
)
def test_an_immediate_tolerance_that_cannot_mean_anything_is_refused(tune, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(confirm_raw(**tune))


def test_an_immediate_tolerance_needs_a_myopic_baseline():
    raw = confirm_raw(immediate_tolerance=0.05)
    raw["selectors"] = [{"name": "random"}, {"name": "lhas", "params": {"knn": 16}}]
    with pytest.raises(ConfigError, match="no best myopic selector to measure the tolerance from"):
        config_from_dict(raw)


def test_a_trial_below_the_floor_is_printed_with_the_score_it_was_ranked_by(caplog):
    """The sweep's console line shows the objective and, when the floor cut it, the constrained score ASHA and TPE
    ranked the trial by: 0.30 - 10 x (0.485 - 0.455) = 0.0, worked by hand."""
    import logging
    from types import SimpleNamespace

    from lhas_ray.tuning.scores import constrained
    from lhas_ray.tuning.trials import TrialLines

    above = {"objective": 0.2, "immediate_score": 0.5, "constrained_objective": 0.2, "stages_done": 3}
    below = {"objective": 0.3, "immediate_score": 0.455, "constrained_objective": constrained(0.3, 0.455, 0.485)}
    lines = TrialLines(total=2)
    with caplog.at_level(logging.INFO, logger="lhas_ray.tuning"):
        for i, result in enumerate((above, {**below, "stages_done": 3})):
            trial = SimpleNamespace(experiment_tag=f"{i + 1}_l_u=1", trial_id=f"id{i}", last_result=result)
            lines.on_trial_complete(0, [], trial)
    assert caplog.messages[0] == "[1/2] trial t001_id0 ended after 3 stage(s): objective 0.200"
    assert caplog.messages[1] == (
        "[2/2] trial t002_id1 ended after 3 stage(s): objective 0.300 (ranked at 0.000: immediate 0.455 is below the "
        "floor)"
    )
