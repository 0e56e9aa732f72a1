"""The report's selector colours: one hue per selector family, a distinct shade per selector, one mapping for every
figure of a report."""

from __future__ import annotations

import colorsys

import pytest

from lhas_ray.report.colors import FAMILY_COLORS, SELECTOR_FAMILIES, colors_for, selector_family

# the 13 registry names (lhas first), a tuned lhas and a free label the config names as an lhas
EVERY = ["lhas", *[n for n in SELECTOR_FAMILIES if n != "lhas"], "lhas_tuned", "tgt_a015"]


def _hue(rgba: tuple) -> tuple[float, float]:
    h, _, s = colorsys.rgb_to_hls(*rgba[:3])
    return round(h, 6), round(s, 6)


def test_families_are_the_selection_modules_of_the_registry():
    """The report keeps its own table (it does not import torch and Ray); it must match the registry."""
    from lhas_ray.selection.base import registry

    assert {n: c.__module__.rsplit(".", 1)[1] for n, c in registry().items()} == SELECTOR_FAMILIES
    assert set(SELECTOR_FAMILIES.values()) | {"other"} == set(FAMILY_COLORS)


def test_one_family_one_hue_every_selector_its_own_colour():
    names = {"tgt_a015": "lhas"}  # a label the config says is an lhas
    colors = colors_for(EVERY, names)
    assert list(colors) != EVERY and sorted(colors) == sorted(EVERY)  # every selector, grouped by family
    assert len(set(colors.values())) == len(EVERY)
    families: dict[str, set] = {}
    for s, c in colors.items():
        families.setdefault(selector_family(s, names.get(s)), set()).add(_hue(c))
    assert all(len(hues) == 1 for hues in families.values()), families  # a family shares its hue...
    assert len({next(iter(h)) for h in families.values()}) == len(families)  # ...and no other family has it
    assert families.keys() == set(SELECTOR_FAMILIES.values())
    assert [selector_family(s, names.get(s)) for s in ("lhas_tuned", "tgt_a015", "el2n")] == [
        "lhas",
        "lhas",
        "gradient",
    ]
    # a family's selectors come together, in the order given
    assert list(colors)[:4] == ["lhas", "lhas_tuned", "tgt_a015", "random"]
    assert selector_family("tgt_a015") == "other"  # without the config's name, a free label is "other"


@pytest.mark.slow  # renders a full report (a few seconds)
def test_every_figure_of_a_report_gets_the_same_mapping(tmp_path, monkeypatch):
    from lhas_ray.report import figures, page
    from tests.synthetic_run import build_synthetic_run, default_config

    selectors = ["random", "loss_high", "lhas", "rds", "tuned"]
    cfg = default_config(selectors=selectors, seeds=(0,), n_stages=2)
    cfg["selectors"][-1] = {"name": "lhas", "label": "tuned"}
    build_synthetic_run(str(tmp_path), selectors=selectors, seeds=(0,), n_stages=2, config=cfg)
    seen = []
    for name in ("fig_metrics", "fig_bump", "fig_pareto"):
        real = getattr(figures, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(dict(args[1]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(page, name, spy)
    page.write_report(str(tmp_path), tensorboard=False)
    assert len(seen) == 3 and all(m == seen[0] for m in seen)
    assert seen[0] == colors_for(selectors, {"tuned": "lhas"})
    assert _hue(seen[0]["tuned"]) == _hue(seen[0]["lhas"]) != _hue(seen[0]["random"])
