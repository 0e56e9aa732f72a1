"""The HTML report: every image embedded and decodable, every section there, and bad input refused with nothing written."""

from __future__ import annotations

import base64
import glob
import html
import os
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from lhas_ray.evaluation.definitions import FORGETTING_TEXT, definitions
from lhas_ray.evaluation.metrics import trajectory_metrics
from lhas_ray.evaluation.ranking import rank_analysis
from lhas_ray.report import SECTIONS, write_report, write_tensorboard
from lhas_ray.report.figures import pareto_front_of as pareto_front
from lhas_ray.report.verdict import verdict
from lhas_ray.store import ResultStore, Unit

try:
    from synthetic_run import build_synthetic_run, default_config, long_metrics_from_matrix
except ImportError:  # tests/ is a package
    from tests.synthetic_run import build_synthetic_run, default_config, long_metrics_from_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img\b[^>]*\bsrc='([^']*)'")
REPORT_OUTPUTS = ("report.html", "report.md", "report", "trajectory.parquet", "ranking.parquet", "tensorboard")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    build_synthetic_run(out, selectors=("random", "loss", "rds"), seeds=(0, 1), n_stages=2, probe_steps=4)
    path = write_report(out)
    return out, path


def _page(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_every_image_is_an_embedded_png(run_dir):
    out, path = run_dir
    assert path == os.path.join(out, "report.html")
    srcs = IMG.findall(_page(path))
    assert len(srcs) == 5  # accuracy matrix, metrics over stages, bump chart, pareto, timings
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    pngs = sorted(glob.glob(os.path.join(out, "report", "*.png")))
    assert len(pngs) == 5
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert all(open(p, "rb").read() in embedded for p in pngs)  # the files beside the page are the same images


def test_every_section_is_present(run_dir):
    page = _page(run_dir[1])
    for section in SECTIONS:
        if section in ("tuning", "objective-terms", "confirmation", "composition"):
            # no trials.parquet, no recorded objective terms, no confirmation.parquet, no selections/ in this run
            assert f"id='{section}'" not in page
        else:
            assert f"<section id='{section}'>" in page
    assert "random, loss, rds" not in page  # selectors are listed sorted
    assert "loss, random, rds" in page and "0, 1" in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "<th>col</th>" not in text and not re.search(r"\bnan\b", text, re.IGNORECASE)  # no leaked NaN cells


def test_page_is_self_contained(run_dir):
    page = _page(run_dir[1])
    assert not re.search(r"""(?:src|href)=['"](?!data:)""", page)  # nothing is fetched from elsewhere


def test_markdown_twin(run_dir):
    out, _ = run_dir
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert md.startswith("# Long-horizon data selection: report")
    for link in re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", md):
        assert os.path.getsize(os.path.join(out, link)) > 0
    assert "## Verdict" in md and "## Rank reversal" in md


def test_tables_written_beside_the_report(run_dir):
    out, _ = run_dir
    store = ResultStore(out)
    traj = store.read_parquet("trajectory.parquet").to_pandas()
    assert list(traj.columns) == ["selector", "seed", "stage", "metric", "value"]
    assert set(traj["stage"]) == {1, 2}
    kinds = set(store.read_parquet("ranking.parquet").column("kind").to_pylist())
    assert {"rank", "tau", "difference", "myopia", "family"} <= kinds  # two seeds: tested, in families


def test_tensorboard_scalars_are_replaced_not_duplicated(run_dir):
    out, _ = run_dir
    traj = ResultStore(out).read_parquet("trajectory.parquet").to_pandas()
    write_tensorboard(out, traj)  # a second time
    for sel in ("random", "loss", "rds"):
        for seed in (0, 1):
            files = glob.glob(os.path.join(out, "tensorboard", sel, str(seed), "events.out.tfevents.*"))
            assert len(files) == 1 and os.path.getsize(files[0]) > 0


def test_tuning_section_when_trials_exist(tmp_path):
    out = str(tmp_path)
    store = build_synthetic_run(out, selectors=("random", "rds"), seeds=(0,), n_stages=1, probe_steps=2)
    store.write_parquet("trials.parquet", pa.table({"trial": [0, 1, 2], "objective": [0.1, 0.4, 0.3]}))
    page = _page(write_report(out, tensorboard=False))
    assert "<section id='tuning'>" in page
    assert len(IMG.findall(page)) == 6
    assert "Only one stage was run" in page  # T = 1: the verdict says there is no long-horizon evidence


def test_smallest_run_without_curves_or_timings(tmp_path):
    out = str(tmp_path)
    build_synthetic_run(out, selectors=("random",), seeds=(0,), n_stages=1)
    shutil.rmtree(os.path.join(out, "curves.parquet"))
    shutil.rmtree(os.path.join(out, "timings.parquet"))
    page = _page(write_report(out, tensorboard=False))
    assert len(IMG.findall(page)) == 4  # no timings figure
    assert "No timings were recorded." in page
    assert "none recorded: lca and steps_to_threshold are absent" in page
    assert "Only one selector was run (random): there is nothing to rank." in page
    assert "1 seed: descriptive only (no intervals, no tests)" in page
    assert "bootstrap" not in page.lower()


# --- the verdict is computed from the numbers ------------------------------------------------------------------------
def _verdict_of(out: str, **kw) -> list[str]:
    store = build_synthetic_run(out, **kw)
    m, c = (store.read_table(t).to_pandas() for t in ("metrics", "curves"))
    return verdict(rank_analysis(trajectory_metrics(m, c, censor_at=kw.get("probe_steps", 5) + 1)))


def test_verdict_names_a_point_myopic_selector(tmp_path):
    lines = _verdict_of(str(tmp_path), selectors=("random", "loss", "rds"), seeds=(0, 1, 2), n_stages=3)
    text = "\n".join(lines)
    assert "Now (immediate accuracy after stage 1): rds leads" in text
    assert "The leader changes from rds (now)" in text
    # rds is better now and worse later by point estimate in every seed, but 3 seeds cannot reach significance
    assert "Better than random now and worse on acc later by point estimate" in text and "rds (now +" in text
    assert "No selector is shown myopic against random at alpha 0.05" in text
    assert "Myopic against" not in text


def test_verdict_without_a_myopic_selector(tmp_path):
    text = "\n".join(_verdict_of(str(tmp_path), selectors=("random", "loss"), seeds=(0, 1), n_stages=2))
    assert "No selector is shown myopic against random" in text
    assert "by point estimate" not in text  # loss is not better than random now
    assert "Myopic against" not in text


def test_verdict_without_random(tmp_path):
    text = "\n".join(_verdict_of(str(tmp_path), selectors=("loss", "rds"), seeds=(0, 1), n_stages=2))
    # verdict() without settings: the ranking's own note says it
    assert "Note: No 'random' selector in this run: nothing was tested against it." in text


def test_verdict_without_random_in_the_report(tmp_path):
    out = str(tmp_path)
    build_synthetic_run(out, selectors=("loss", "rds"), seeds=(0, 1), n_stages=2)
    write_report(out, tensorboard=False)
    lines = _verdict_lines(out)
    assert "Myopia: no 'random' selector was run, so nothing was tested against it." in lines
    assert not any("selector in this run" in x for x in lines)  # said once, not again as a note


# --- what the evidence supports -----------------------------------------------------------------------------------
NO_CLAIM_WORDS = ("confident", "surely", "holds", "reverses")
INTERVAL = re.compile(r"\[\s*[-+]?\d*\.\d+\s*,\s*[-+]?\d*\.\d+\s*\]")  # "[lo, hi]" (not R[0,i] or a link)


def _verdict_lines(out: str) -> list[str]:
    """The verdict's bullet lines from report.md."""
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    section = md.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def _html_verdict_lines(out: str) -> list[str]:
    page = _page(os.path.join(out, "report.html"))
    ul = re.search(r"<ul class='verdict'>(.*?)</ul>", page, re.S).group(1)
    return [html.unescape(x) for x in re.findall(r"<li>(.*?)</li>", ul, re.S)]


def _text_of(path: str) -> str:
    """A report file's text without its embedded images (base64 can spell any word)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", open(path, encoding="utf-8").read())


@pytest.fixture(scope="module")
def one_seed_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one_seed"))
    build_synthetic_run(out, selectors=("random", "loss", "rds"), seeds=(0,), n_stages=3, probe_steps=5)
    write_report(out, tensorboard=False)
    return out


def test_one_seed_report_makes_no_claim(one_seed_run):
    out = one_seed_run
    md, page = _text_of(os.path.join(out, "report.md")), _text_of(os.path.join(out, "report.html"))
    table = ResultStore(out).read_parquet("ranking.parquet").to_pandas()
    words = " ".join(str(v) for col in ("kind", "metric", "statistic", "note") for v in table[col].dropna())
    for text in (md, page, words):
        for word in NO_CLAIM_WORDS:
            assert not re.search(rf"\b{word}\b", text, re.IGNORECASE), word
    lines = _verdict_lines(out)
    assert lines == _html_verdict_lines(out)  # the page and its twin say the same
    assert len(lines) >= 5
    for line in lines:  # no bracket at all in the verdict, but the placeholder of "(seeds: [...])"
        assert "[" not in line.replace("seeds: [...]", ""), line
    assert not INTERVAL.search(md) and not INTERVAL.search(page)  # no interval anywhere
    assert lines[0] == "One seed: every number below describes this run only. Nothing here is a finding."
    assert any(x.startswith("Evidence: 1 seed") and "One seed is descriptive only" in x for x in lines)
    assert "sign-flip" not in " ".join(lines) and "Holm" not in " ".join(lines)  # no test is named: none was run
    # the myopia line is a point description, said as such
    assert any("in this one seed" in x and "this is not a finding" in x for x in lines)
    # ranking.parquet: no interval bound, no p-value, no family
    assert table["lo"].isna().all() and table["hi"].isna().all()
    assert table[table["statistic"].str.startswith("p_value")]["value"].isna().all()
    assert "family" not in set(table["kind"])
    assert (table[(table["kind"] == "myopia") & (table["statistic"] == "myopic")]["value"] == 0).all()


@pytest.fixture(scope="module")
def five_seed_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("five_seeds"))
    build_synthetic_run(out, selectors=("random", "loss", "rds"), seeds=(0, 1, 2, 3, 4), n_stages=3, probe_steps=5)
    write_report(out, tensorboard=False)
    return out


def test_five_seed_verdict_names_the_test_seeds_and_families(five_seed_run):
    out = five_seed_run
    lines = _verdict_lines(out)
    assert lines == _html_verdict_lines(out)
    evidence = next(x for x in lines if x.startswith("Evidence:"))
    assert evidence.startswith("Evidence: 5 seeds")
    assert "sign-flip" in evidence and "all 32 sign patterns" in evidence and "Holm" in evidence
    # family sizes by hand: 2 non-baseline selectors against random;
    # long-horizon metrics tested: acc, forgetting, bwt, fwt, lca, steps_to_threshold, imbalance_range,
    # imbalance_cv, untrained_retention, ood_acc, ood_gap = 11 (reached_threshold is a companion)
    # myopia: 2 x 11 = 22; difference: 2 x (11 + immediate@3 + gain@3 + immediate@1) = 28; reversal: 11
    assert "myopia (22 claims)" in evidence
    assert "difference (28 claims)" in evidence
    assert "reversal (11 claims)" in evidence
    assert "one fixed draw of the data (data.seed = 0)" in evidence
    # 1/2^5 = 0.03125 one-sided, and 0.03125 * 22 > 0.05: Holm's first step needs p <= 0.05/22
    assert 1 / 32 * 22 > 0.05
    assert "no myopia claim can reach significance at this number of seeds" in evidence
    assert "9 seeds could" in evidence  # 2^9 = 512 >= 22/0.05 = 440 > 256
    assert not any(x.startswith("Myopic against") for x in lines)  # nothing can be significant
    # intervals are shown now, and they are named
    now = next(x for x in lines if x.startswith("Now (immediate accuracy after stage 1)"))
    assert INTERVAL.search(now) and "95% t-interval of the mean over seeds" in now
    page = _text_of(os.path.join(out, "report.html"))
    assert "bootstrap" not in page.lower()


def test_five_seed_ranking_pairs_every_seed_on_censored_steps(five_seed_run):
    table = ResultStore(five_seed_run).read_parquet("ranking.parquet").to_pandas()
    traj = ResultStore(five_seed_run).read_parquet("trajectory.parquet").to_pandas()
    assert np.isfinite(traj["value"]).all()
    stt = traj[traj["metric"] == "steps_to_threshold"]
    assert stt["value"].max() == 6.0  # rds never reaches the threshold: censored at probe steps (5) + 1
    assert set(traj[traj["metric"] == "reached_threshold"]["value"]) == {0.0, 1.0}
    n = table[
        (table["kind"] == "difference") & (table["metric"] == "steps_to_threshold") & (table["statistic"] == "n_seeds")
    ]
    assert len(n) == 2 and (n["value"] == 5).all()  # loss and rds against random, every seed paired
    fams = table[table["kind"] == "family"].set_index("metric")["value"].to_dict()
    assert fams == {"myopia": 22, "difference": 28, "reversal": 11}


def test_censoring_reads_probe_steps_from_the_config(tmp_path):
    # the curves log probe steps 0..5, but config.yaml says probe.steps = 9: a seed that never reaches the
    # threshold is censored at 9 + 1 = 10, not at the last logged step + 1
    out = str(tmp_path)
    cfg = default_config(selectors=("random", "rds"), seeds=(0,), n_stages=2, probe_steps=9)
    build_synthetic_run(out, selectors=("random", "rds"), seeds=(0,), n_stages=2, probe_steps=5, config=cfg)
    write_report(out, tensorboard=False)
    traj = ResultStore(out).read_parquet("trajectory.parquet").to_pandas()
    rds = traj[(traj["selector"] == "rds") & (traj["stage"] == 1)].set_index("metric")["value"]
    assert rds["reached_threshold"] == 0.0 and rds["steps_to_threshold"] == 10.0


def test_per_seed_data_draws_are_stated(tmp_path):
    out = str(tmp_path)
    cfg = default_config(selectors=("random", "rds"), seeds=(0, 1), n_stages=2, resample="per_seed")
    build_synthetic_run(out, selectors=("random", "rds"), seeds=(0, 1), n_stages=2, config=cfg)
    write_report(out, tensorboard=False)
    evidence = next(x for x in _verdict_lines(out) if x.startswith("Evidence:"))
    assert evidence.startswith("Evidence: 2 seeds") and "data.resample: per_seed" in evidence
    assert "one fixed draw" not in evidence
    assert "per seed (data.resample: per_seed)" in open(os.path.join(out, "report.md"), encoding="utf-8").read()


# --- the definitions section is generated from metrics.definitions --------------------------------------------------
def _hand_run(out: str, R: np.ndarray, forgetting: str) -> None:
    """A complete one-selector, one-seed run whose accuracy matrix is R (no curves, no timings)."""
    store = ResultStore(out)
    cfg = default_config(selectors=("s",), seeds=(0,), n_stages=R.shape[0] - 1, forgetting=forgetting)
    store.write_bytes("config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    table = long_metrics_from_matrix(R, "s", 0)
    for stage in range(R.shape[0]):
        unit = Unit("s", 0, stage)
        store.write_part("metrics", unit, table.filter(pc.equal(table.column("stage"), stage)))
        store.commit(unit)


# R[1,2] = 0.6 by transfer before stage 2 is trained, R[2,2] = 0.5, R[3,2] = 0.4 (see test_metrics.R_TRANSFER)
R_TRANSFER = np.array(
    [[np.nan, 0.9, 0.95, 0.1], [np.nan, 0.7, 0.6, 0.2], [np.nan, 0.5, 0.5, 0.3], [np.nan, 0.6, 0.4, 0.8]]
)


@pytest.mark.parametrize(
    ("variant", "other", "forgetting_at_3"),
    [
        ("since_trained", "any_earlier", 0.1),  # ((0.7-0.6) + (0.5-0.4))/2
        ("any_earlier", "since_trained", 0.15),  # ((0.7-0.6) + (0.6-0.4))/2
    ],
)
def test_definitions_section_follows_the_configured_variant(tmp_path, variant, other, forgetting_at_3):
    out = str(tmp_path)
    _hand_run(out, R_TRANSFER, variant)
    write_report(out, tensorboard=False)
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    section = md.split("## Definitions", 1)[1].split("\n## ", 1)[0]
    expected = [f"- **{k}**: {v}" for k, v in definitions(variant).items()]
    assert [x for x in section.splitlines() if x.startswith("- ")] == expected
    page = _page(os.path.join(out, "report.html"))
    dl = re.search(r"<section id='definitions'>.*?<dl>(.*?)</dl>", page, re.S).group(1)
    pairs = [(html.unescape(k), html.unescape(v)) for k, v in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", dl)]
    assert pairs == list(definitions(variant).items())
    assert FORGETTING_TEXT[variant] in md and FORGETTING_TEXT[other] not in md
    assert f"- **forgetting**: {variant}" in md  # the run section names the variant too
    # and the numbers follow the same variant
    traj = ResultStore(out).read_parquet("trajectory.parquet").to_pandas()
    f = traj[traj["metric"] == "forgetting"].set_index("stage")["value"]
    assert f.to_dict() == pytest.approx({2: 0.2, 3: forgetting_at_3})


def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    y = np.array([3.0, 2.0, 1.0, 1.0, 3.0])
    assert pareto_front(x, y).tolist() == [True, True, True, False, True]  # (2,1) is beaten by (2,2); equal points tie


# --- bad input: a clear error and nothing written --------------------------------------------------------------------
def _assert_nothing_written(out: str) -> None:
    for name in REPORT_OUTPUTS:
        assert not os.path.exists(os.path.join(out, name)), name


def test_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="is not a lhas_ray run: it has no config.yaml"):
        write_report(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_run_without_metrics(tmp_path):
    ResultStore(str(tmp_path)).write_bytes("config.yaml", b"seeds: [0]\n")
    with pytest.raises(ValueError, match="no committed metrics"):
        write_report(str(tmp_path))
    _assert_nothing_written(str(tmp_path))


def test_run_with_a_missing_stage(tmp_path):
    out = str(tmp_path)
    build_synthetic_run(out, selectors=("random", "loss"), seeds=(0, 1), n_stages=2, drop=[("loss", 1, 2)])
    with pytest.raises(ValueError) as err:
        write_report(out)
    assert "incomplete run" in str(err.value)
    assert "selector 'loss' seed 1: missing stage(s) [2] of 0..2" in str(err.value)
    _assert_nothing_written(out)


def test_run_with_a_stage_gap_and_a_missing_seed(tmp_path):
    out = str(tmp_path)
    drop = [(s, r, 2) for s in ("random", "loss") for r in (0, 1)] + [("loss", 1, t) for t in range(4)]
    build_synthetic_run(out, selectors=("random", "loss"), seeds=(0, 1), n_stages=3, drop=drop)
    with pytest.raises(ValueError) as err:
        write_report(out)
    msg = str(err.value)
    assert "selector 'random' seed 0: missing stage(s) [2] of 0..3" in msg
    assert "selector 'loss': missing seed(s) [1]" in msg
    _assert_nothing_written(out)


def test_uncommitted_parts_do_not_count(tmp_path):
    out = str(tmp_path)
    store = build_synthetic_run(out, selectors=("random",), seeds=(0,), n_stages=2, drop=[("random", 0, 2)])
    # a crashed stage: its parts are on disk but its commit marker is not
    store.write_parquet(f"metrics.parquet/{Unit('random', 0, 2).key}.parquet", pa.table({"x": [1]}))
    with pytest.raises(ValueError, match=r"missing stage\(s\) \[2\]"):
        write_report(out)
    _assert_nothing_written(out)


def test_bad_config_values(tmp_path):
    out = str(tmp_path)
    build_synthetic_run(out, selectors=("random",), seeds=(0,), n_stages=1, config={"evaluation": {"lca_beta": "x"}})
    with pytest.raises(ValueError, match="evaluation.lca_beta"):
        write_report(out)
    _assert_nothing_written(out)


def test_read_tables_once_more_unchanged(run_dir):
    # writing the report does not touch the run's own tables
    store = ResultStore(run_dir[0])
    metrics = store.read_table("metrics").to_pandas()
    assert len(metrics.drop_duplicates()) == len(metrics)
    assert isinstance(metrics, pd.DataFrame)


def test_objective_terms_section_shows_the_mean_contributions(tmp_path):
    """Terms recorded with a selection (lhas) appear as their mean over seeds, with J their sum per seed."""
    import pyarrow as pa

    from lhas_ray.store import Unit

    out = str(tmp_path / "terms")
    store = build_synthetic_run(out, selectors=("random", "lhas"), seeds=(0, 1), n_stages=2)
    for seed, scale in ((0, 1.0), (1, 3.0)):
        for stage in (1, 2):
            part = pa.table(
                {
                    "selector": ["lhas"] * 2,
                    "seed": [seed] * 2,
                    "stage": [stage] * 2,
                    "term": ["utility", "concentration"],
                    "weight": [1.0, 2.0],
                    "unit": [0.25, 0.05],
                    "contribution": [10.0 * scale, -2.0 * scale],
                }
            )
            store.write_part("terms", Unit("lhas", seed, stage), part)
    md = open(write_report(out, tensorboard=False).replace(".html", ".md")).read()
    section = md[md.index("## Objective terms") :]
    section = section[: section.index("\n## ", 5)]
    row = next(line for line in section.splitlines() if line.startswith("| lhas | 1 |"))
    # utility: mean of 10 and 30 = +20.00; concentration: mean of -2 and -6 = -4.00; J: mean of 8 and 24 = +16.00
    assert "+20.00 (w 1, unit 0.25)" in row and "-4.00 (w 2, unit 0.05)" in row and row.rstrip(" |").endswith("+16.00")


def test_a_declared_myopia_family_is_the_one_tested(tmp_path):
    """evaluation.myopia_metrics: [acc] makes the myopia family one claim per non-baseline selector, as the report
    then says (with 10 seeds and 2 claims, 1/2^10 * 2 < 0.05: reachable, so no 'cannot reach' sentence)."""
    cfg = default_config(selectors=("random", "loss", "rds"), seeds=tuple(range(10)))
    cfg["evaluation"]["myopia_metrics"] = ["acc"]
    out = str(tmp_path / "declared")
    build_synthetic_run(out, selectors=("random", "loss", "rds"), seeds=tuple(range(10)), config=cfg)
    md = open(write_report(out, tensorboard=False).replace(".html", ".md")).read()
    assert "myopia (2 claims)" in md and "no myopia claim can reach significance" not in md
    import pandas as pd

    ranking = pd.read_parquet(os.path.join(out, "ranking.parquet"))
    myopia = ranking[(ranking.kind == "myopia") & (ranking.statistic == "p_value_holm")]
    assert set(myopia.metric) == {"acc"} and len(myopia) == 2


def _rewritten_sweep(sweep: str, dest: str, top: list[str]) -> None:
    """The reference: how sweeps used to be reported, by copying the top trials' parts into one run folder, each
    trial's rows relabelled with its id (kept here to check that reading the trial folders gives the same report)."""
    src_cfg = yaml.safe_load(open(os.path.join(sweep, "sweep.yaml")))["config"]
    store = ResultStore(dest)
    store.write_bytes(
        "config.yaml", yaml.safe_dump({**src_cfg, "selectors": [{"name": "lhas", "label": t} for t in top]}).encode()
    )
    store.write_bytes("trials.parquet", open(os.path.join(sweep, "trials.parquet"), "rb").read())
    for trial in top:
        src = ResultStore(os.path.join(sweep, "trials", trial))
        for unit in src.committed_units():
            dest_unit = Unit(trial, unit.seed, unit.stage)
            for name in ("metrics", "curves", "timings"):
                part = f"{name}.parquet/{unit.key}.parquet"
                if src.exists(part):
                    table = src.read_parquet(part)
                    idx = table.column_names.index("selector")
                    store.write_part(
                        name, dest_unit, table.set_column(idx, "selector", pa.array([trial] * table.num_rows))
                    )
            store.commit(dest_unit)


def test_a_sweep_is_reported_from_its_trial_folders_as_the_rewritten_folder_was(tmp_path):
    sweep = str(tmp_path / "sweep")
    names = ["t001_a", "t002_b", "t003_c"]
    cfg = default_config(selectors=("lhas",))
    cfg["tune"] = {"report_top": 2}
    os.makedirs(sweep)
    with open(os.path.join(sweep, "sweep.yaml"), "w") as f:
        yaml.safe_dump({"config": cfg, "space": {}, "trials": 3}, f)
    for name in names:  # each trial folder holds one selector; its name sets the synthetic trajectory
        build_synthetic_run(os.path.join(sweep, "trials", name), selectors=[name])
    trials = pa.table(
        {
            "trial": names,
            "trial_number": [1, 2, 3],
            "status": ["completed", "completed", "completed"],
            "objective": [0.3, 0.1, 0.5],
            "immediate_score": [0.2, 0.4, 0.1],
            "run": [f"trials/{n}" for n in names],
        }
    )
    pq.write_table(trials, os.path.join(sweep, "trials.parquet"))
    ref = str(tmp_path / "rewritten")
    _rewritten_sweep(sweep, ref, ["t003_c", "t001_a"])  # the best two by objective
    write_report(sweep, tensorboard=False)
    write_report(ref, tensorboard=False)
    for name in ("trajectory.parquet", "ranking.parquet"):
        a, b = (pd.read_parquet(os.path.join(d, name)) for d in (sweep, ref))
        keys = list(a.columns)
        pd.testing.assert_frame_equal(
            a.sort_values(keys, na_position="first").reset_index(drop=True),
            b.sort_values(keys, na_position="first").reset_index(drop=True),
        )
    assert set(pd.read_parquet(os.path.join(sweep, "trajectory.parquet"))["selector"]) == {"t003_c", "t001_a"}
    assert not os.path.exists(os.path.join(sweep, "metrics.parquet"))  # nothing was copied into the sweep folder
    md = [open(os.path.join(d, "report.md")).read().replace(d, "OUT") for d in (sweep, ref)]
    assert md[0] == md[1]


def test_composition_section_counts_what_each_selector_picked(tmp_path):
    """Selections written for a synthetic run: the page's table shows the shares counted here by hand."""
    from lhas_ray.schemas import SELECTIONS

    out = str(tmp_path)
    build_synthetic_run(out, selectors=("random", "rds"), seeds=(0, 1), n_stages=2, probe_steps=4)
    store = ResultStore(out)
    roles = {
        "random": ["target", "related", "unrelated", "unrelated"],
        "rds": ["target", "target", "target", "related"],
    }
    for sel, tags in roles.items():
        for seed in (0, 1):
            for t in (1, 2):
                table = pa.table(
                    {
                        "example_id": [10 * t + i for i in range(4)],
                        "skill": ["sort"] * 4,
                        "tags": [[r, "noise"] if i == 0 else [r] for i, r in enumerate(tags)],
                        "order": list(range(4)),
                    },
                    schema=SELECTIONS,
                )
                store.write_parquet(f"selections/{sel}/s{seed}/stage{t}.parquet", table)
    page = _page(write_report(out))
    assert "<section id='composition'>" in page
    section = page[page.index("<section id='composition'>") :].split("</section>")[0]
    assert len(IMG.findall(section)) == 2  # the stacked shares and the overlap heatmaps
    cells = [re.findall(r"<td>\s*([^<]*?)\s*</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)]
    shares = {row[0]: [float(v) for v in row[1:]] for row in cells if row}
    header = re.findall(r"<th>\s*([^<]*?)\s*</th>", section)
    assert header[:6] == ["selector", "s1 duplicate", "s1 noise", "s1 related", "s1 target", "s1 unrelated"]
    assert shares["random"][:5] == [0, 25, 25, 25, 50] and shares["random"][5:] == shares["random"][:5]
    assert shares["rds"][:5] == [0, 25, 25, 75, 0]


def test_a_tie_everywhere_is_shown_as_no_ranking_and_not_myopic_reads_as_one_claim():
    """tau-b is undefined when one ranking is all ties (every selector censored at the probe's end): the table says
    so instead of printing "+nan" beside "0%" discordant. A selector that is not myopic is labelled as one claim, not
    as "not better now and worse later" (which reads as: worse now, and worse later)."""
    from types import SimpleNamespace

    from lhas_ray.evaluation.baselines import myopia_verdict
    from lhas_ray.report.tables import tau_table

    tau = pd.DataFrame(
        {"metric": ["acc", "steps_to_threshold"], "stage": [3, 2], "n_selectors": [13, 13],
         "tau_b": [0.336, np.nan], "discordant": [0.29, 0.0]}
    )  # fmt: skip
    table = tau_table(SimpleNamespace(tau=tau, descriptive=True, level=0.95))
    assert table["tau-b of mean rankings"].tolist() == ["+0.336", "n/a (all tied)"]
    assert table["discordant pairs"].tolist() == ["29%", "n/a"]
    untested = SimpleNamespace(p_holm=np.nan, point_myopic=False, myopic=False, baseline="random")
    tested = SimpleNamespace(p_holm=0.4, point_myopic=False, myopic=False, baseline="random")
    for row in (untested, tested):
        assert myopia_verdict(row, 0.05) == "not myopic: not both better now and worse later"


def test_selectors_tied_at_a_bump_charts_end_share_one_label():
    from lhas_ray.report.figures import end_labels

    ranks = {"rds": 1.0, "kcenter": 2.5, "random": 2.5, "lhas": 4.0, "less": float("nan")}
    assert end_labels(ranks) == [(1.0, "rds"), (2.5, "kcenter, random"), (4.0, "lhas")]  # less: unranked, no label


def test_a_trial_below_the_immediate_floor_is_never_the_best_so_far(tmp_path):
    from lhas_ray.report.figures import best_so_far

    objective = np.array([0.3, 0.5, 0.4, 0.2, 0.6])
    done = np.array([True, True, True, False, True])
    constrained = np.array([0.3, 0.5 - 10 * 0.1, 0.4, 0.2, 0.6])  # trial 2: 0.1 below the floor
    best, below = best_so_far(objective, done, constrained)
    assert below.tolist() == [False, True, False, False, False]
    assert best.tolist() == [0.3, 0.3, 0.4, 0.4, 0.6]  # by hand: 0.5 is below the floor, 0.2 was stopped
    best, below = best_so_far(objective, done)  # no floor
    assert not below.any() and best.tolist() == [0.3, 0.5, 0.5, 0.5, 0.6]
    out = str(tmp_path)
    store = build_synthetic_run(out, selectors=("random", "rds"), seeds=(0,), n_stages=1, probe_steps=2)
    table = {"trial": [0, 1, 2, 3, 4], "objective": objective, "constrained_objective": constrained}
    store.write_parquet("trials.parquet", pa.table({**table, "status": ["completed"] * 3 + ["stopped", "completed"]}))
    page = _page(write_report(out, tensorboard=False))
    assert "below the sweep&#x27;s immediate floor" in page or "below the sweep's immediate floor" in page
