"""What a sweep searches and how it scores a trial, with no Ray: search spaces, objective formulas, Pareto sets.

**Search spaces** (``search_spaces/*.yaml``) name parameters of the ``lhas`` selector and a distribution for each::

    description: free text (optional)
    params:
      l_u: {type: uniform, low: 0.0, high: 2.0}             # a float in [low, high]
      l_c: {type: loguniform, low: 0.01, high: 10.0}        # a float, log-uniform; low > 0
      n_clusters: {type: int, low: 4, high: 32, log: true}  # an integer in [low, high]; optional step (not with log)
      utility: {type: choice, values: [quality, neg_loss]}  # one of a list of distinct values

Every bound and choice is checked against the selector's own parameter rules, so a bad space fails with a message
naming ``params.<name>.<key>`` before any trial starts.

**Objective formulas** (``tune.objective``, ``tune.immediate``) are arithmetic over trajectory metric names
(``lhas_ray.evaluation.metrics.METRICS``): numbers, ``+ - * /`` and parentheses. A name is read at the trial's
latest committed stage t: ``acc`` is the value at t (or at the last stage before t where it is defined: ``lca`` has
no value at the final stage, so the probe after stage T-1 counts), ``mean_acc`` the mean over stages 1..t of the
defined values, ``first_acc`` the value at the first stage where it is defined. A name never defined (forgetting
with one stage) counts 0. Scores of several seeds are averaged; every objective is maximised.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

KINDS = ("uniform", "loguniform", "int", "choice")
_KEYS = {
    "uniform": {"low", "high"},
    "loguniform": {"low", "high"},
    "int": {"low", "high", "step", "log"},
    "choice": {"values"},
}
PREFIXES = ("mean_", "first_")


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
        packaged = Path(__file__).resolve().parent.parent / "search_spaces" / (p.name if p.suffix else f"{p.name}.yaml")
        if p.parent == Path(".") and packaged.is_file():
            p = packaged
        else:
            raise SearchSpaceError(f"search space file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"search space {p} is not valid YAML: {e}") from None
    return parse_search_space(raw, str(p), selector)


# --- objective formulas --------------------------------------------------------------------------------------------
_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}


def formula_names() -> list[str]:
    """Every name a formula may use: each trajectory metric, plain and with the mean_ / first_ prefixes."""
    from lhas_ray.evaluation.metrics import METRICS

    return [p + m for p in ("", *PREFIXES) for m in METRICS]


@dataclass(frozen=True)
class Formula:
    """A parsed objective formula; ``evaluate`` takes numbers or equally long arrays per name."""

    text: str
    tree: ast.Expression = field(compare=False, repr=False)
    names: frozenset[str] = frozenset()

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The formula's value; division by zero gives inf or NaN, never an exception."""
        with np.errstate(all="ignore"):
            return self._eval(self.tree.body, variables)

    def _eval(self, node: ast.AST, env: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, env), self._eval(node.right, env))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, env))
        if isinstance(node, ast.Constant):
            return np.float64(node.value)
        return env[node.id]


def parse_formula(text: str, where: str | None = None) -> Formula:
    """Parse an objective formula; ValueError naming ``where`` (if given), the offending part and the allowed names."""
    from lhas_ray.evaluation.metrics import METRICS

    def fail(msg: str) -> ValueError:
        return ValueError(f"{where}: {msg}" if where else msg)

    if not isinstance(text, str) or not text.strip():
        raise fail("must be a non-empty formula such as 'acc - forgetting + mean_lca'")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise fail(f"{text!r} is not a formula ({e.msg})") from None
    allowed = set(formula_names())
    names: set[str] = set()
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Name):
            if node.id not in allowed:
                raise fail(
                    f"unknown name {node.id!r} in {text!r}; allowed: the trajectory metrics {list(METRICS)}, "
                    "each also as mean_<metric> or first_<metric>"
                )
            names.add(node.id)
        elif isinstance(node, ast.Constant):
            if not _is_number(node.value):
                raise fail(f"only finite numbers may appear as constants, got {node.value!r}")
        elif isinstance(node, ast.BinOp | ast.UnaryOp):
            if type(node.op) not in _BINOPS and type(node.op) not in _UNARY:
                raise fail(f"operator {type(node.op).__name__} is not allowed in {text!r}; use + - * / and ()")
        elif not isinstance(node, ast.operator | ast.unaryop | ast.expr_context):
            raise fail(f"{type(node).__name__} is not allowed in {text!r}; use metric names, numbers, + - * / and ()")
    return Formula(text.strip(), tree, frozenset(names))


def stage_variables(trajectory: pd.DataFrame) -> pd.DataFrame:
    """Formula variables per (seed, stage) of one selector's trajectory metrics: latest, mean_ and first_ forms.

    NaN where a metric has not been defined yet; ``stage_scores`` counts those as 0.
    """
    from lhas_ray.evaluation.metrics import METRICS

    wide = trajectory.pivot_table(index=["seed", "stage"], columns="metric", values="value", aggfunc="mean")
    wide = wide.reindex(columns=list(METRICS)).sort_index()
    parts = []
    for _, g in wide.groupby(level="seed", sort=True):
        latest = g.ffill()
        mean = g.expanding().mean()
        first = g.bfill().iloc[[0] * len(g)].set_axis(g.index).where(g.notna().cumsum() > 0)
        parts.append(pd.concat([latest, mean.add_prefix("mean_"), first.add_prefix("first_")], axis=1))
    return pd.concat(parts)


def stage_scores(trajectory: pd.DataFrame, formulas: Mapping[str, Formula]) -> pd.DataFrame:
    """Each formula's score per (seed, stage), beside each metric's latest value (NaN if never defined)."""
    variables = stage_variables(trajectory)
    out = variables[[c for c in variables.columns if not c.startswith(PREFIXES)]].copy()
    filled = variables.fillna(0.0)
    for name, formula in formulas.items():
        value = formula.evaluate({k: filled[k].to_numpy() for k in formula.names})
        out[name] = np.broadcast_to(np.asarray(value, dtype=float), (len(filled),))
    return out


# --- what a sweep found ---------------------------------------------------------------------------------------------
def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` [n, k] that no other row beats on every column (all maximised); NaN rows are never on it."""
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v).any(axis=1)
    ge = (v[None, :, :] >= v[:, None, :]).all(axis=2)
    gt = (v[None, :, :] > v[:, None, :]).any(axis=2)
    dominated = (ge & gt & ok[None, :]).any(axis=1)
    return ok & ~dominated


def param_importances(trials: pd.DataFrame, objective: str = "objective", seed: int = 0) -> pd.Series:
    """Optuna (fANOVA) importance of each ``param_*`` column for ``objective`` over finished trials; empty if < 3."""
    import optuna

    params = [c for c in trials.columns if c.startswith("param_")]
    done = trials[np.isfinite(pd.to_numeric(trials.get(objective), errors="coerce").astype(float))]
    if "status" in done:
        done = done[done["status"] == "completed"]
    if len(done) < 3 or not params:
        return pd.Series(dtype=float)
    dists = {}
    for c in params:
        col = done[c]
        if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
            dists[c] = optuna.distributions.CategoricalDistribution(sorted(set(col.tolist()), key=repr))
        elif col.min() == col.max():
            continue
        elif pd.api.types.is_integer_dtype(col):
            dists[c] = optuna.distributions.IntDistribution(int(col.min()), int(col.max()))
        else:
            dists[c] = optuna.distributions.FloatDistribution(float(col.min()), float(col.max()))
    if not dists:
        return pd.Series(dtype=float)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        values = {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in dists}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(row[objective])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series({k.removeprefix("param_"): v for k, v in imp.items()}, dtype=float)
