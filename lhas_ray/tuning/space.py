"""What a sweep searches: search spaces over one selector's parameters, validated before any trial starts.

**Search spaces** (``lhas_ray/search_spaces/*.yaml``, found by bare name or as ``search_spaces/NAME.yaml``) name parameters of the ``lhas`` selector and a distribution for each::

    description: free text (optional)
    params:
      l_u: {type: uniform, low: 0.0, high: 2.0}             # a float in [low, high]
      l_c: {type: loguniform, low: 0.01, high: 10.0}        # a float, log-uniform; low > 0
      n_clusters: {type: int, low: 4, high: 32, log: true}  # an integer in [low, high]; optional step (not with log)
      utility: {type: choice, values: [quality, neg_loss]}  # one of a list of distinct values

Every bound and choice is checked against the selector's own parameter rules, so a bad space fails with a message
naming ``params.<name>.<key>`` before any trial starts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGED_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"  # lhas_ray/search_spaces/, in the wheel too
KINDS = ("uniform", "loguniform", "int", "choice")


_KEYS = {
    "uniform": {"low", "high"},
    "loguniform": {"low", "high"},
    "int": {"low", "high", "step", "log"},
    "choice": {"values"},
}


class SearchSpaceError(ValueError):
    """A search space that cannot be used, with each problem on its own line naming its key."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: its distribution kind and bounds (or choices)."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1
    log: bool = False
    values: tuple = ()

    def distribution(self):
        """The Optuna distribution of this parameter."""
        import optuna

        if self.kind == "uniform":
            return optuna.distributions.FloatDistribution(self.low, self.high)
        if self.kind == "loguniform":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=True)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step)
        return optuna.distributions.CategoricalDistribution(self.values)

    def corners(self) -> list[Any]:
        """The extreme values a trial can draw: both bounds, or every choice."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space over one selector's parameters."""

    params: dict[str, ParamSpec]
    selector: str = "lhas"
    source: str = "<dict>"
    description: str = ""
    raw: dict = field(default_factory=dict, compare=False)

    def distributions(self) -> dict:
        """{name: optuna distribution}, the form OptunaSearch takes."""
        return {name: p.distribution() for name, p in self.params.items()}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _parse_param(name: str, spec: Any, problems: list[str]) -> ParamSpec | None:
    where = f"params.{name}"
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a mapping like {{type: uniform, low: 0, high: 1}}, got {spec!r}")
        return None
    kind = spec.get("type")
    if kind not in KINDS:
        problems.append(f"{where}.type: must be one of {list(KINDS)}, got {kind!r}")
        return None
    unknown = sorted(set(spec) - _KEYS[kind] - {"type"})
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown} for type {kind!r}; allowed: {sorted(_KEYS[kind])}")
    missing = sorted(_KEYS[kind] - {"step", "log"} - set(spec))
    if missing:
        problems.append(f"{where}: missing key(s) {missing} for type {kind!r}")
        return None
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            problems.append(f"{where}.values: must be a non-empty list, got {values!r}")
            return None
        if any(isinstance(v, dict | list) or v is None for v in values):
            problems.append(f"{where}.values: must be plain numbers, strings or booleans, got {values!r}")
            return None
        if len({repr(v) for v in values}) != len(values):
            problems.append(f"{where}.values: must be distinct, got {values!r}")
            return None
        return ParamSpec(name, kind, values=tuple(values))
    low, high = spec["low"], spec["high"]
    if kind == "int":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        if not ok:
            problems.append(f"{where}: low and high must be integers for type 'int', got low={low!r}, high={high!r}")
            return None
        step, log = spec.get("step", 1), spec.get("log", False)
        if not isinstance(log, bool):
            problems.append(f"{where}.log: must be true or false, got {log!r}")
            return None
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            problems.append(f"{where}.step: must be an integer >= 1, got {step!r}")
            return None
        if log and step != 1:
            problems.append(f"{where}: step must be 1 when log is true (Optuna's rule), got step={step}")
            return None
        if log and low < 1:
            problems.append(f"{where}.low: must be >= 1 when log is true, got {low}")
            return None
        if (high - low) % step:
            problems.append(f"{where}: high - low ({high - low}) must be a multiple of step ({step})")
            return None
    else:
        if not (_is_number(low) and _is_number(high)):
            problems.append(f"{where}: low and high must be finite numbers, got low={low!r}, high={high!r}")
            return None
        low, high, step, log = float(low), float(high), 1, kind == "loguniform"
        if kind == "loguniform" and low <= 0:
            problems.append(f"{where}.low: must be > 0 for type 'loguniform', got {low:g}")
            return None
    if not low < high:
        problems.append(f"{where}: low ({low}) must be smaller than high ({high})")
        return None
    return ParamSpec(name, kind, low, high, step=step, log=log)


def parse_search_space(raw: Any, source: str = "<dict>", selector: str = "lhas") -> SearchSpace:
    """Validate a search-space mapping against ``selector``'s parameters; SearchSpaceError lists every problem."""
    from lhas_ray.selection.base import registry

    if not isinstance(raw, dict):
        raise SearchSpaceError(
            f"search space {source}: must be a mapping with a 'params' key, got {type(raw).__name__}"
        )
    problems: list[str] = []
    unknown = sorted(set(raw) - {"params", "description", "selector"})
    if unknown:
        problems.append(f"{unknown[0]}: unknown key; allowed top-level keys: ['description', 'params', 'selector']")
    if raw.get("selector", selector) != selector:
        problems.append(f"selector: only {selector!r} can be searched, got {raw.get('selector')!r}")
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        problems.append("params: must be a non-empty mapping of parameter name -> distribution")
        params_raw = {}
    cls = registry()[selector]
    params: dict[str, ParamSpec] = {}
    for name, spec in params_raw.items():
        if name not in cls.params:
            problems.append(
                f"params.{name}: {selector!r} has no parameter {name!r}; its parameters: {sorted(cls.params)}"
            )
            continue
        parsed = _parse_param(str(name), spec, problems)
        if parsed is None:
            continue
        rule = cls.params[name]
        for value in parsed.corners():
            if rule.check(value) is None:
                key = "values" if parsed.kind == "choice" else ("low" if value == parsed.low else "high")
                problems.append(
                    f"params.{name}.{key}: {value!r} is not a valid {selector} {name!r} (must be {rule.allowed})"
                )
                break
        else:
            params[name] = parsed
    if problems:
        raise SearchSpaceError(f"invalid search space {source}:\n  " + "\n  ".join(problems))
    return SearchSpace(params, selector, source, str(raw.get("description", "")), raw)


def load_search_space(path: str | os.PathLike, selector: str = "lhas") -> SearchSpace:
    """Read a search-space YAML (safe loader) and validate it; SearchSpaceError names each bad key."""
    p = Path(path)
    if not p.is_file():
        packaged = PACKAGED_SPACES / (p.name if p.suffix else f"{p.name}.yaml")
        if p.parent in (Path("."), Path("search_spaces")) and packaged.is_file():
            p = packaged
        else:
            known = sorted(q.stem for q in PACKAGED_SPACES.glob("*.yaml"))
            raise SearchSpaceError(f"search space file {str(path)!r} not found (packaged spaces: {known})")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"search space {p} is not valid YAML: {e}") from None
    return parse_search_space(raw, str(p), selector)
