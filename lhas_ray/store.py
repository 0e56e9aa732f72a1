"""The results store: parquet tables written in atomic, per-stage parts, so a crash never loses or duplicates rows.

Layout under OUT (a local path, a ``file://`` URI, or any URI ``pyarrow.fs`` understands, e.g. ``s3://``)::

    OUT/config.yaml
    OUT/metrics.parquet/<selector>__s<seed>__t<stage>.parquet   one part per committed unit
    OUT/curves.parquet/...   OUT/timings.parquet/...   OUT/features/...   OUT/selections/...
    OUT/_committed/<selector>__s<seed>__t<stage>.json           the commit marker of that unit
    OUT/_workers/<run>-group<g>-rank<r>.json                    the node and process each Train rank last ran on

A unit (selector, seed, stage) counts only once its marker exists: parts written by a stage that crashed
before its marker are ignored by readers and overwritten by the rerun, which writes the same part names.
``pd.read_parquet(OUT/metrics.parquet)`` reads every part; ``ResultStore.read_table`` reads committed parts only.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lhas_ray.schemas import LONG_TABLES, conform

WORKERS = "_workers"
TABLES = ("metrics", "curves", "timings")  # the long tables every unit writes (terms: LHAS units only)
_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


class DamagedOutput(ValueError):
    """A file of the output folder that cannot be read (truncated, overwritten from outside): names it and what to do."""


@dataclass(frozen=True)
class Unit:
    """One committed piece of work: stage ``stage`` of the trajectory (selector, seed); stage 0 is the base model."""

    selector: str
    seed: int
    stage: int

    @property
    def key(self) -> str:
        return f"{_SAFE.sub('-', self.selector)}__s{self.seed}__t{self.stage}"


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Turn a local path or URI into (filesystem, path) through pyarrow.fs: one code path for disk and object stores."""
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


class ResultStore:
    """Reads and writes one run's output folder; every write is atomic (temporary name, then rename)."""

    def __init__(self, uri: str):
        self.fs, self.root = _resolve(uri)
        # a relative path is made absolute here: Ray workers run in other working directories
        self.uri = self.root if isinstance(self.fs, pafs.LocalFileSystem) and "://" not in uri else uri

    # --- paths ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def local_path(self, *parts: str) -> str | None:
        """The OS path of a store path when the store is on local disk, else None."""
        return self.path(*parts) if isinstance(self.fs, pafs.LocalFileSystem) else None

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def listdir(self, *parts: str) -> list[str]:
        """Base names directly under a folder of the store, sorted; empty if it does not exist."""
        if not self.exists(*parts):
            return []
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(posixpath.basename(info.path) for info in self.fs.get_file_info(sel))

    # --- atomic writes -------------------------------------------------------------------------------
    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write a file atomically: readers see the old file or the new one, never half of it."""
        final = self.path(relpath)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.create_dir(posixpath.dirname(final), recursive=True)
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, final)
        except OSError as e:  # a full disk, a lost connection: no half file is left, the old one (if any) is whole
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise OSError(getattr(e, "errno", None), f"could not write {final} ({e}); the file was not replaced") from e
        return final

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open_input_stream(self.path(relpath)) as f:
            return f.read()

    def write_parquet(self, relpath: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(relpath, buf.getvalue())

    def read_parquet(self, relpath: str) -> pa.Table:
        path = self.path(relpath)
        try:
            with self.fs.open_input_file(path) as f:
                return pq.read_table(f)
        except pa.ArrowInvalid as e:  # exists but is not whole: say which file and what to do
            raise DamagedOutput(f"{path} is not a readable parquet file ({e}){_redo_hint(self, relpath)}") from e

    # --- units: parts and commit markers -------------------------------------------------------------
    def write_part(self, table_name: str, unit: Unit, table: pa.Table) -> None:
        """Write this unit's rows of a long table, cast to its declared schema (a part whose columns differ is
        refused); the part is ignored until ``commit`` marks the unit."""
        if table_name not in LONG_TABLES:
            raise ValueError(f"unknown long table {table_name!r}; long tables: {sorted(LONG_TABLES)}")
        table = conform(table, LONG_TABLES[table_name], f"{table_name} part of {unit.key}")
        self.write_parquet(f"{table_name}.parquet/{unit.key}.parquet", table)

    def commit(self, unit: Unit, info: dict | None = None) -> None:
        """Mark a unit complete; written last, after every part of the unit."""
        payload = {"selector": unit.selector, "seed": unit.seed, "stage": unit.stage, **(info or {})}
        self.write_bytes(f"_committed/{unit.key}.json", json.dumps(payload, sort_keys=True).encode())

    def unit_parts(self, unit: Unit) -> list[str]:
        """The relative paths of the long-table parts this unit wrote."""
        return [
            f"{t}.parquet/{unit.key}.parquet" for t in LONG_TABLES if self.exists(f"{t}.parquet", f"{unit.key}.parquet")
        ]

    def is_committed(self, unit: Unit) -> bool:
        return self.exists("_committed", f"{unit.key}.json")

    def committed_after(self, units: list[Unit], since: float) -> bool:
        """Whether any of ``units`` was committed after ``since`` (a time.time() value), by its marker's mtime."""
        infos = self.fs.get_file_info([self.path("_committed", f"{u.key}.json") for u in units])
        return any(i.type == pafs.FileType.File and i.mtime is not None and i.mtime.timestamp() > since for i in infos)

    def committed_keys(self) -> set[str]:
        return {name[: -len(".json")] for name in self.listdir("_committed") if name.endswith(".json")}

    def committed_units(self) -> list[Unit]:
        units = []
        for name in self.listdir("_committed"):
            if name.endswith(".json"):
                info = json.loads(self.read_bytes(f"_committed/{name}"))
                units.append(Unit(info["selector"], int(info["seed"]), int(info["stage"])))
        return sorted(units, key=lambda u: (u.selector, u.seed, u.stage))

    def read_table(self, table_name: str) -> pa.Table | None:
        """All committed rows of a long table (parts of uncommitted units are skipped); None if it has none."""
        keys = self.committed_keys()
        parts = [
            self.read_parquet(f"{table_name}.parquet/{name}")
            for name in self.listdir(f"{table_name}.parquet")
            if name.endswith(".parquet") and name[: -len(".parquet")] in keys
        ]
        if not parts:
            return None
        return pa.concat_tables(parts, promote_options="default")

    # --- folders of files (checkpoints, tensorboard) -------------------------------------------------
    def upload_dir(self, local_dir: str, relpath: str) -> str:
        """Copy a local folder into the store (a checkpoint, say); on local disk this is a plain copy."""
        dest = self.path(relpath)
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(local_dir, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        return dest

    def download_dir(self, relpath: str, local_dir: str) -> str:
        """Copy a store folder to local disk, for libraries (from_pretrained) that read only local paths."""
        os.makedirs(local_dir, exist_ok=True)
        pafs.copy_files(
            self.path(relpath), local_dir, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )
        return local_dir

    def is_run(self) -> bool:
        """True when this folder holds a lhas_ray run (its resolved config is there)."""
        return self.exists("config.yaml")


def _redo_hint(store: ResultStore, relpath: str) -> str:
    """What to do about a damaged part of a committed unit: delete its marker and its trajectory's later ones."""
    name = posixpath.basename(relpath)
    m = re.fullmatch(r"(.+)__s(\d+)__t(\d+)\.parquet", name)
    if not m or not store.exists("_committed", name.replace(".parquet", ".json")):
        return ""
    prefix, stage = f"{m.group(1)}__s{m.group(2)}__t", int(m.group(3))
    later = sorted(k for k in store.committed_keys() if k.startswith(prefix) and int(k[len(prefix) :]) >= stage)
    markers = ", ".join(store.path("_committed", f"{k}.json") for k in later)
    return f"; to redo it, delete {markers} and rerun the same command: those units are run again"


def check_committed(store: ResultStore, trajectories: list[tuple[str, int]], n_stages: int) -> None:
    """Before a run resumes: every trajectory's committed stages are 0..k with no gap, and each committed unit's
    parts have a readable parquet footer. Raises DamagedOutput naming the file and what to do."""
    keys = store.committed_keys()
    for selector, seed in trajectories:
        done = [t for t in range(n_stages + 1) if Unit(selector, seed, t).key in keys]
        if not done:
            continue
        gap = next((t for t in range(max(done)) if t not in done), None)
        if gap is not None:
            missing = store.path("_committed", f"{Unit(selector, seed, gap).key}.json")
            later = ", ".join(store.path("_committed", f"{Unit(selector, seed, t).key}.json") for t in done if t > gap)
            raise DamagedOutput(
                f"{missing} is missing while later stages of {selector} seed {seed} are committed ({later}): "
                "restore it, or delete those later markers and rerun the same command to redo that trajectory "
                f"from stage {gap}"
            )
        for t in done:
            for rel in store.unit_parts(Unit(selector, seed, t)):
                path = store.path(rel)
                try:
                    with store.fs.open_input_file(path) as f:
                        pq.read_metadata(f)
                except (pa.ArrowInvalid, OSError) as e:
                    raise DamagedOutput(f"{path} is not a readable parquet file ({e}){_redo_hint(store, rel)}") from e
