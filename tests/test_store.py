"""The results store: atomic parts, commit markers, committed-only reads, local paths and file:// URIs alike."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lhas_ray.schemas import CURVES, METRICS
from lhas_ray.store import ResultStore, Unit


def _rows(n: int, value: float, schema: pa.Schema = METRICS) -> pa.Table:
    """n rows of the declared schema: every column null but metric and value."""
    cols = {f.name: pa.nulls(n, f.type) for f in schema}
    return pa.table({**cols, "metric": ["accuracy"] * n, "value": [value] * n}, schema=schema)


@pytest.mark.parametrize("scheme", ["path", "file"])
def test_only_committed_units_are_read(tmp_path, scheme):
    uri = str(tmp_path / "out") if scheme == "path" else f"file://{tmp_path / 'out'}"
    store = ResultStore(uri)
    done, crashed = Unit("random", 0, 1), Unit("random", 0, 2)
    store.write_part("metrics", done, _rows(3, 1.0))
    store.commit(done)
    store.write_part("metrics", crashed, _rows(2, 9.0))  # a stage that died before its commit
    table = store.read_table("metrics")
    assert table.num_rows == 3 and set(table.column("value").to_pylist()) == {1.0}
    assert store.is_committed(done) and not store.is_committed(crashed)
    assert store.committed_units() == [done]


def test_rewriting_a_part_replaces_it(tmp_path):
    store = ResultStore(str(tmp_path))
    unit = Unit("loss_high", 3, 0)
    store.write_part("curves", unit, _rows(5, 0.0, CURVES))
    store.write_part("curves", unit, _rows(2, 1.0, CURVES))
    store.commit(unit)
    assert store.read_table("curves").num_rows == 2


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    store = ResultStore(str(tmp_path))
    store.write_bytes("config.yaml", b"a: 1\n")
    store.write_bytes("config.yaml", b"a: 2\n")
    assert store.read_bytes("config.yaml") == b"a: 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    assert store.is_run()


def test_selector_names_are_made_safe_for_paths():
    assert Unit("lhas/v2 wide", 1, 2).key == "lhas-v2-wide__s1__t2"


def test_relative_paths_become_absolute_for_workers_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ResultStore("outputs/run")
    assert store.uri == str(tmp_path / "outputs" / "run")
    store.write_bytes("config.yaml", b"x: 1\n")
    monkeypatch.chdir("/")  # a worker's working directory
    assert ResultStore(store.uri).read_bytes("config.yaml") == b"x: 1\n"


def test_committed_after_tells_units_committed_since_a_time(tmp_path):
    import time

    store = ResultStore(str(tmp_path))
    early, late = Unit("random", 0, 0), Unit("random", 0, 1)
    store.commit(early)
    time.sleep(0.05)
    since = time.time()
    time.sleep(0.05)
    assert not store.committed_after([early, late], since)  # late not committed, early committed before
    store.commit(late)
    assert store.committed_after([early, late], since)
    assert not store.committed_after([early], since)


def test_a_part_whose_schema_differs_from_the_declared_one_is_refused(tmp_path):
    store = ResultStore(str(tmp_path))
    unit = Unit("random", 0, 1)
    with pytest.raises(
        ValueError,
        match=r"columns differ .* missing \['eval_set', 'eval_stage', 'seed', 'selector', 'skill', 'stage'\], unexpected \['x'\]",
    ):
        store.write_part("metrics", unit, pa.table({"metric": ["accuracy"], "value": [1.0], "x": [1]}))
    with pytest.raises(ValueError, match="cannot cast"):
        store.write_part("metrics", unit, _rows(1, 1.0).set_column(7, "value", pa.array(["high"])))
    with pytest.raises(ValueError, match="unknown long table 'metric'"):
        store.write_part("metric", unit, _rows(1, 1.0))
    assert not store.exists("metrics.parquet")  # nothing was written
    store.write_part("metrics", unit, _rows(2, 0.5).select(list(reversed(METRICS.names))))  # order is not a schema
    assert store.read_parquet(f"metrics.parquet/{unit.key}.parquet").schema.equals(METRICS)
