"""Data selectors: one module per family, every one reachable by name, all sharing one submodular optimiser.

``get_selector(name, **params).select(features, k, context)`` returns k ``example_id``s (int64) in selection order.
"""

from __future__ import annotations

from typing import Any

from lhas_ray.selection import (  # noqa: F401  (importing registers each family's selectors)
    diversity,
    gradient,
    lhas,
    loss,
    quality,
    random,
    representation,
    utility_diversity,
)
from lhas_ray.selection.base import Selector, registry
from lhas_ray.selection.context import SelectionContext
from lhas_ray.selection.objective import facility_location_value
from lhas_ray.selection.pool import Pool, validate_features


def available_selectors() -> list[str]:
    """Names accepted by get_selector, sorted."""
    return sorted(registry())


def get_selector(name: str, **params: Any) -> Selector:
    """The selector called ``name`` configured with ``params``; ValueError names what is wrong and what is allowed."""
    selectors = registry()
    if name not in selectors:
        raise ValueError(f"unknown selector {name!r}; available selectors: {available_selectors()}")
    return selectors[name](**params)


__all__ = [
    "Pool",
    "SelectionContext",
    "Selector",
    "available_selectors",
    "facility_location_value",
    "get_selector",
    "validate_features",
]
