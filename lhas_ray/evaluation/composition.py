"""What each selector picked: the make-up of every selection and how much selectors' selections overlap.

Built-in pools tag every row with its role towards the stage's targets (``target``, ``related``, ``unrelated``) and
with ``noise`` / ``duplicate`` when it is one; text and HF pools have no roles, so their make-up is by skill (domain).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lhas_ray.store import ResultStore

ROLES = ("target", "related", "unrelated")
FLAGS = ("noise", "duplicate")


def read_selections(store: ResultStore, label: str | None = None) -> pd.DataFrame | None:
    """Every committed selection of a run, long: selector, seed, stage, order, example_id, skill, tags; ``label``
    replaces the selector (a sweep's trial folders, each a run of ``lhas``). None when the run has none."""
    frames = []
    for unit in store.committed_units():
        path = f"selections/{unit.selector}/s{unit.seed}/stage{unit.stage}.parquet"
        if unit.stage == 0 or not store.exists(path):
            continue
        df = store.read_parquet(path).to_pandas()
        frames.append(df.assign(selector=label or unit.selector, seed=unit.seed, stage=unit.stage))
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)[["selector", "seed", "stage", "order", "example_id", "skill", "tags"]]


def has_tags(tags: pd.Series, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """For each name, whether each row's tag list holds it (one pass over the flattened lists, no row loop)."""
    lists = pa.array(tags.tolist(), pa.list_(pa.string()))
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    parent = pc.list_parent_indices(lists).to_numpy()
    out = {}
    for name in names:
        hit = np.zeros(len(lists), dtype=bool)
        hit[parent[flat == name]] = True
        out[name] = hit
    return out


def composition(selections: pd.DataFrame) -> pd.DataFrame:
    """Share of each selection that is target / related / unrelated (built-in roles: they sum to 1), noise and
    duplicate (flags, each on its own), or, for pools without roles, each skill (summing to 1): long table
    selector, seed, stage, kind, share."""
    selections = selections.reset_index(drop=True)
    keys = ["selector", "seed", "stage"]
    flags = has_tags(selections["tags"], (*ROLES, *FLAGS))
    if (flags["target"] | flags["related"] | flags["unrelated"]).all():
        wide = selections[keys].assign(**{k: v.astype(float) for k, v in flags.items()}).groupby(keys).mean()
    else:
        wide = pd.crosstab([selections[k] for k in keys], selections["skill"], normalize="index")
    long = wide.reset_index().melt(id_vars=keys, var_name="kind", value_name="share")
    return long.sort_values([*keys, "kind"]).reset_index(drop=True)


def jaccard(selections: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Per stage, the Jaccard index |A ∩ B| / |A ∪ B| of every two selectors' selections, mean over the seeds both
    ran (selector x selector, 1 on the diagonal)."""
    out = {}
    for stage, by_stage in selections.groupby("stage"):
        names = sorted(by_stage["selector"].unique())
        sums, counts = np.zeros((len(names), len(names))), np.zeros((len(names), len(names)))
        for _, by_seed in by_stage.groupby("seed"):
            sets = {s: set(g["example_id"]) for s, g in by_seed.groupby("selector")}
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    if a in sets and b in sets:
                        union = len(sets[a] | sets[b])
                        sums[i, j] += len(sets[a] & sets[b]) / union if union else 1.0
                        counts[i, j] += 1
        with np.errstate(invalid="ignore"):
            out[int(stage)] = pd.DataFrame(sums / counts, index=names, columns=names)
    return out


def composition_table(shares: pd.DataFrame) -> pd.DataFrame:
    """The composition as one table for the report: a row per selector, a column per (stage, kind), mean over
    seeds, as percentages."""
    mean = shares.groupby(["selector", "stage", "kind"])["share"].mean().unstack(["stage", "kind"])
    mean.columns = [f"s{stage} {kind}" for stage, kind in mean.columns]
    return (100 * mean).round(0).astype("Int64").reset_index()  # whole percentages
