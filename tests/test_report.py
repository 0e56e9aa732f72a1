"""The HTML report: every image embedded and decodable, every section there, and bad input refused with nothing written."""

from __future__ import annotations

import base64
import glob
import os
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lhas_ray.evaluation.metrics import trajectory_metrics
from lhas_ray.evaluation.ranking import rank_analysis
from lhas_ray.report import SECTIONS, pareto_front, verdict, write_report, write_tensorboard
from lhas_ray.store import ResultStore, Unit

try:
    from synthetic_run import build_synthetic_run
except ImportError:  # tests/ is a package
    from tests.synthetic_run import build_synthetic_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img\b[^>]*\bsrc='([^']*)'")
REPORT_OUTPUTS = ("report.html", "report.md", "report", "trajectory.parquet", "ranking.parquet", "tensorboard")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    build_synthetic_run(out, selectors=("random", "loss", "rds"), seeds=(0, 1), n_stages=2, probe_steps=4)
    path = write_report(out, n_boot=200)
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
        if section == "tuning":
            assert "id='tuning'" not in page  # no trials.parquet in this run
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
    assert {"rank", "tau", "myopia"} <= kinds


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
    page = _page(write_report(out, n_boot=20, tensorboard=False))
    assert "<section id='tuning'>" in page
    assert len(IMG.findall(page)) == 6
    assert "Only one stage was run" in page  # T = 1: the verdict says there is no long-horizon evidence


def test_smallest_run_without_curves_or_timings(tmp_path):
    out = str(tmp_path)
    build_synthetic_run(out, selectors=("random",), seeds=(0,), n_stages=1)
    shutil.rmtree(os.path.join(out, "curves.parquet"))
    shutil.rmtree(os.path.join(out, "timings.parquet"))
    page = _page(write_report(out, n_boot=20, tensorboard=False))
    assert len(IMG.findall(page)) == 4  # no timings figure
    assert "No timings were recorded." in page
    assert "none recorded: lca and steps_to_threshold are absent" in page
    assert "Only one selector was run (random): there is nothing to rank." in page
    assert "Note: 1 seed: bootstrap intervals" in page


# --- the verdict is computed from the numbers ------------------------------------------------------------------------
def _verdict_of(out: str, **kw) -> list[str]:
    store = build_synthetic_run(out, **kw)
    m, c = (store.read_table(t).to_pandas() for t in ("metrics", "curves"))
    return verdict(rank_analysis(trajectory_metrics(m, c), n_boot=200))


def test_verdict_names_a_myopic_selector(tmp_path):
    lines = _verdict_of(str(tmp_path), selectors=("random", "loss", "rds"), seeds=(0, 1, 2), n_stages=3)
    text = "\n".join(lines)
    assert "Now (immediate accuracy after stage 1): rds leads" in text
    assert "Myopic against random on final average accuracy" in text and "rds (now +" in text
    assert "the ranking reverses" in text


def test_verdict_without_a_myopic_selector(tmp_path):
    text = "\n".join(_verdict_of(str(tmp_path), selectors=("random", "loss"), seeds=(0, 1), n_stages=2))
    assert "No selector is better than random now and worse later" in text
    assert "Myopic against" not in text


def test_verdict_without_random(tmp_path):
    text = "\n".join(_verdict_of(str(tmp_path), selectors=("loss", "rds"), seeds=(0, 1), n_stages=2))
    assert "no 'random' selector was run, so the myopia test was not done" in text


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
    store.write_part("metrics", Unit("random", 0, 2), pa.table({"x": [1]}))
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
