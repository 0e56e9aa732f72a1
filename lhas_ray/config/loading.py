"""Configs in and out: YAML read with a safe loader, dotted ``--set`` overrides, packaged configs by bare name, and
one error (``ConfigError``) that names every bad field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lhas_ray.config.experiment import ExperimentConfig

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be used, with every problem on its own line, each naming its field."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:  # a check across fields: its message names the fields itself
            lines.append(f"  {msg}")
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented fields in lhas_ray/config/sections.py and sources.py)"
        lines.append(
            f"  {loc}: {msg}"
            + (
                f" (got {e['input']!r})"
                if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e["input"], dict)
                else ""
            )
        )
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """Parse an override's value as YAML (so 1e-3, true, [a, b] work), with a safe loader."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides; list items by index (``stages.0.budget=50``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        path, value = item.split("=", 1)
        parts = path.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, path)
            node[idx] = _parse_value(value)
        else:
            node[last] = _parse_value(value)
    return raw


def _index(node: list, part: str, path: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {path!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _child(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {path!r}: cannot descend into a {type(node).__name__}")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config path as given, or a packaged config by bare name (``demo`` -> lhas_ray/configs/demo.yaml)."""
    p = Path(path)
    if p.exists():
        return p
    packaged = PACKAGED_CONFIGS / (p.name if p.suffix else f"{p.name}.yaml")
    if packaged.exists() and p.parent == Path("."):
        return packaged
    raise ConfigError(
        f"config file {str(path)!r} not found (packaged configs: {sorted(c.stem for c in PACKAGED_CONFIGS.glob('*.yaml'))})"
    )


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (safe loader), apply overrides, validate; raise ConfigError naming each bad field."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p} must be a mapping of fields, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(p))


def config_from_dict(raw: dict, source: str = "<dict>") -> ExperimentConfig:
    """Validate a config mapping; raise ConfigError naming each bad field."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that ``load_config`` accepts again."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
