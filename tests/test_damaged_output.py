"""Damage done to an output folder from outside (a truncated part, a lost commit marker, a full disk): a rerun or a
report stops naming the damaged file and what to do, and nothing already committed is lost or half-written."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pyarrow as pa
import pytest

from lhas_ray.schemas import METRICS
from lhas_ray.store import DamagedOutput, ResultStore, Unit, check_committed

TRAJ = [("random", 0)]


def _rows(n: int, value: float) -> pa.Table:
    cols = {f.name: pa.nulls(n, f.type) for f in METRICS}
    return pa.table({**cols, "metric": ["accuracy"] * n, "value": [value] * n}, schema=METRICS)


def _trajectory(uri: str, stages: int = 2) -> ResultStore:
    store = ResultStore(uri)
    for t in range(stages + 1):
        store.write_part("metrics", Unit("random", 0, t), _rows(4, float(t)))
        store.commit(Unit("random", 0, t))
    return store


def test_a_truncated_part_names_the_file_and_the_markers_to_delete(tmp_path):
    store = _trajectory(str(tmp_path / "out"))
    part = tmp_path / "out" / "metrics.parquet" / "random__s0__t1.parquet"
    part.write_bytes(part.read_bytes()[:40])  # cut short, as a partial copy would leave it
    markers = [str(tmp_path / "out" / "_committed" / f"random__s0__t{t}.json") for t in (1, 2)]
    with pytest.raises(DamagedOutput) as e:
        check_committed(store, TRAJ, 2)  # what a rerun checks before any Ray work
    assert str(part) in str(e.value) and all(m in str(e.value) for m in markers) and "__t0.json" not in str(e.value)
    with pytest.raises(DamagedOutput, match="random__s0__t1.parquet is not a readable parquet file"):
        store.read_table("metrics")  # what the report reads
    for m in markers:  # the advice, followed: the later units are no longer committed, the earlier one is whole
        os.remove(m)
    check_committed(store, TRAJ, 2)
    assert store.read_table("metrics").column("value").to_pylist() == [0.0] * 4


def test_a_missing_marker_between_committed_stages_is_refused(tmp_path):
    store = _trajectory(str(tmp_path / "out"))
    os.remove(tmp_path / "out" / "_committed" / "random__s0__t1.json")
    with pytest.raises(DamagedOutput, match=r"random__s0__t1\.json is missing while later stages .* from stage 1"):
        check_committed(store, TRAJ, 2)
    os.remove(tmp_path / "out" / "_committed" / "random__s0__t2.json")  # the last marker gone: a plain resume
    check_committed(store, TRAJ, 2)


class _FullDisk:
    """The local filesystem, except that writes fail as on a full disk once ``budget`` bytes are spent."""

    def __init__(self, fs, budget: int):
        self._fs, self.budget = fs, budget

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def open_output_stream(self, path):
        stream, disk = self._fs.open_output_stream(path), self

        class _Stream:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def write(self, data):
                disk.budget -= len(data)
                if disk.budget < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                stream.write(data)

        return _Stream()


def _check_full_disk(store: ResultStore, folder: str) -> None:
    store.write_bytes("config.yaml", b"name: kept\n")
    with pytest.raises(OSError, match="could not write .*config.yaml .*No space left on device") as e:
        store.write_bytes("config.yaml", b"x" * 200_000)  # its replacement does not fit
    assert e.value.errno == errno.ENOSPC
    assert open(os.path.join(folder, "config.yaml"), "rb").read() == b"name: kept\n"  # the old file is whole
    assert not [f for f in os.listdir(folder) if ".tmp-" in f]  # and no half-written temporary is left


def test_a_full_disk_fails_the_write_and_keeps_the_old_file(tmp_path):
    folder = str(tmp_path / "out")
    store = ResultStore(folder)
    store.fs = _FullDisk(store.fs, budget=100_000)
    _check_full_disk(store, folder)


def test_a_full_tmpfs_fails_the_write_and_keeps_the_old_file(tmp_path):
    """The same on a real 64 KiB tmpfs, where the machine lets this test mount one (root, CAP_SYS_ADMIN)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the wrapper test stands in")
    try:
        _check_full_disk(ResultStore(str(mnt)), str(mnt))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
