"""The selector contract: parameter specs checked at construction, a name registry, and shared ranking helpers.

Every selector is a small class with one verb, ``select(features, k, context) -> example_ids``; it declares the
feature columns and context fields it needs so the protocol computes only those, and its parameters so a bad value
fails at ``get_selector`` with a message naming the selector, the parameter and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lhas_ray.selection.context import SelectionContext
from lhas_ray.selection.knn import max_similarity, normalize_rows
from lhas_ray.selection.pool import Pool, validate_features

UTILITIES: dict[str, tuple[str, float]] = {
    "loss": ("loss", 1.0),  # high loss first (informative, but also picks label noise)
    "neg_loss": ("loss", -1.0),  # low loss first (easy, clean)
    "quality": ("quality", 1.0),  # e.g. negative reference-model loss
    "el2n": ("el2n", 1.0),
    "grad_norm": ("grad_norm", 1.0),
    # relevance to the current stage: cosine to the nearest target example (RDS+'s similarity), the myopic utility
    "target": ("emb", 1.0),
}
# utilities that read a selection-context field besides their feature column
UTILITY_CONTEXT: dict[str, str] = {"target": "target_embs"}


@dataclass(frozen=True)
class Param:
    """One selector parameter: its default, a checker returning the normalised value (or None if bad), and its range."""

    default: Any
    check: Callable[[Any], Any]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def float_param(default: float, lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = False) -> Param:
    """A finite float in [lo, hi] (or (lo, hi] with lo_open)."""

    def check(v: Any) -> float | None:
        if not _is_real(v) or not math.isfinite(float(v)):
            return None
        v = float(v)
        ok = (v > lo if lo_open else v >= lo) and v <= hi
        return v if ok else None

    left = "(" if lo_open else "["
    right = "]" if math.isfinite(hi) else ")"
    return Param(default, check, f"a finite float in {left}{lo}, {hi}{right}")


def int_param(default: int | None, lo: int = 1, *, optional: bool = False) -> Param:
    """An integer >= lo (or None when optional)."""

    def check(v: Any) -> int | None:
        if v is None and optional:
            return _NONE
        return int(v) if _is_int(v) and v >= lo else None

    return Param(default, check, f"an integer >= {lo}" + (" or None" if optional else ""))


def choice_param(default: str, options: tuple[str, ...]) -> Param:
    """One string out of a fixed set."""
    return Param(default, lambda v: v if isinstance(v, str) and v in options else None, f"one of {list(options)}")


_NONE = object()  # a checker's way of saying "None is a valid value"

# Parameters every submodular selector shares (facility_location, fl_utility, lhas).
OPTIMISER_PARAMS: dict[str, Param] = {
    "knn": int_param(32, 1),
    "greedy": choice_param("lazy", ("lazy", "stochastic", "naive")),
    "epsilon": float_param(0.01, 0.0, 1.0, lo_open=True),
    "partitions": int_param(1, 1),
    "knn_exact_limit": int_param(50_000, 1),
}


class ParamError(ValueError):
    """A bad selector parameter: ``param`` names it (None for a check across parameters), ``detail`` says what is wrong."""

    def __init__(self, selector: str, param: str | None, detail: str) -> None:
        where = f"selector '{selector}' parameter {param!r}" if param else f"selector '{selector}'"
        super().__init__(f"{where}: {detail}")
        self.param, self.detail = param, detail


class Selector:
    """Base class: checks parameters once, validates every input before work, maps positions back to example_ids."""

    name: ClassVar[str] = "selector"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            allowed = sorted(self.params) or "none"
            raise ParamError(self.name, unknown[0], f"no such parameter; allowed parameters: {allowed}")
        self.p: dict[str, Any] = {}
        for key, spec in self.params.items():
            value = params.get(key, spec.default)
            checked = spec.check(value)
            if checked is None:
                raise ParamError(self.name, key, f"must be {spec.allowed}, got {value!r}")
            self.p[key] = None if checked is _NONE else checked
        self._check_params()
        self.requires: frozenset[str] = frozenset(self._requires())
        self.optional: frozenset[str] = frozenset(self._optional())
        context = set(self._context_fields())
        if self.p.get("utility") in UTILITY_CONTEXT:
            context.add(UTILITY_CONTEXT[self.p["utility"]])
        self.context_fields: frozenset[str] = frozenset(context)

    def _check_params(self) -> None:
        """Cross-parameter checks; raise ValueError naming the selector."""

    def _requires(self) -> set[str]:
        return set()

    def _optional(self) -> set[str]:
        return set()

    def _context_fields(self) -> set[str]:
        return set()

    def select(self, features: pa.Table, k: int, context: SelectionContext | None = None) -> np.ndarray:
        """Validate the inputs, then return k example_ids (int64) in selection order."""
        pool = validate_features(
            features,
            k,
            self.requires,
            selector=self.name,
            context=context,
            context_fields=self.context_fields,
            optional=self.optional,
        )
        positions = self._select(pool, int(k))
        return pool.example_id[np.asarray(positions, dtype=np.int64)]

    def _select(self, pool: Pool, k: int) -> np.ndarray:
        """Return k positions into the canonical (example_id-sorted) pool."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.p.items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make a selector reachable by its name."""
    if cls.name in _REGISTRY:
        raise ValueError(f"selector name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Selector]]:
    """Name -> selector class for every registered selector."""
    return dict(_REGISTRY)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, best first; ties go to the smaller position (smaller example_id)."""
    n = scores.shape[0]
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        cut = scores[part].min()
        above = np.flatnonzero(scores > cut)
        tied = np.flatnonzero(scores == cut)[: k - above.size]
        cand = np.concatenate([above, tied])
    else:
        cand = np.arange(n)
    return cand[np.lexsort((cand, -scores[cand]))]


def normalise01(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] in float64 so utility weights are comparable across pools; a constant maps to 0."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def utility_values(pool: Pool, utility: str) -> np.ndarray:
    """The raw utility of every pool example (higher = better) for a utility name in UTILITIES."""
    column, sign = UTILITIES[utility]
    if utility == "target":
        best, _ = max_similarity(normalize_rows(pool[column]), normalize_rows(pool.context.target_embs))
        return best.astype(np.float64)
    return sign * np.asarray(pool[column], dtype=np.float64)
