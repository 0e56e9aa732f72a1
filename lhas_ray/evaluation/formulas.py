"""Objective formulas (``tune.objective``, ``tune.immediate``): arithmetic over trajectory metric names, per seed and stage.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lhas_ray.evaluation.definitions import METRICS

PREFIXES = ("mean_", "first_")


_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}


_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}


def formula_names() -> list[str]:
    """Every name a formula may use: each trajectory metric, plain and with the mean_ / first_ prefixes."""
    return [p + m for p in ("", *PREFIXES) for m in METRICS]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
