"""The report's selector colours: one per selector, the same in every figure, with 13 or more selectors still
readable: each selector family has one hue (tab10) and its selectors are shades of it, listed together."""

from __future__ import annotations

import colorsys

import numpy as np
from matplotlib.colors import to_rgb

# Registry name -> family: the selection module that defines it (tests check this against the registry, which the
# report does not import: it would pull in torch and Ray).
SELECTOR_FAMILIES = {
    "random": "random",
    "loss_high": "loss",
    "loss_low": "loss",
    "grand": "gradient",
    "el2n": "gradient",
    "less": "gradient",
    "rds": "representation",
    "kcenter": "diversity",
    "facility_location": "diversity",
    "quality": "quality",
    "utility_diversity": "utility_diversity",
    "fl_utility": "utility_diversity",
    "lhas": "lhas",
}
# One hue per family (tab10); a family's selectors are shades of it. Labels of no known selector: "other".
FAMILY_COLORS = {
    "lhas": "tab:red",
    "random": "tab:gray",
    "loss": "tab:orange",
    "gradient": "tab:purple",
    "representation": "tab:blue",
    "diversity": "tab:green",
    "quality": "tab:olive",
    "utility_diversity": "tab:cyan",
    "other": "tab:pink",
}


def selector_family(key: str, name: str | None = None) -> str:
    """A selector's family from its registry name, else from the registry name its label starts with
    (``lhas_tuned``: lhas), else "other"."""
    if (name or key) in SELECTOR_FAMILIES:
        return SELECTOR_FAMILIES[name or key]
    prefixes = [n for n in SELECTOR_FAMILIES if key.startswith(n) and key[len(n) : len(n) + 1] in ("_", "-", "/")]
    return SELECTOR_FAMILIES[max(prefixes, key=len)] if prefixes else "other"


def family_shades(base: str, n: int) -> list[tuple]:
    """``n`` colours of one hue: the base colour alone, or dark to light shades of it (HLS lightness 0.3-0.72)."""
    if n == 1:
        return [(*to_rgb(base), 1.0)]
    h, _, s = colorsys.rgb_to_hls(*to_rgb(base))
    return [(*colorsys.hls_to_rgb(h, float(light), s), 1.0) for light in np.linspace(0.3, 0.72, n)]


def colors_for(selectors: list[str], names: dict[str, str] | None = None) -> dict[str, tuple]:
    """One fixed colour per selector, the same in every figure, grouped by family: a family's selectors are shades of
    its hue and come together (families in order of first appearance). ``names``: label -> registry name."""
    names = names or {}
    by_family: dict[str, list[str]] = {}
    for s in selectors:
        by_family.setdefault(selector_family(s, names.get(s)), []).append(s)
    colors: dict[str, tuple] = {}
    for family, members in by_family.items():
        colors.update(zip(members, family_shades(FAMILY_COLORS[family], len(members)), strict=True))
    return colors
