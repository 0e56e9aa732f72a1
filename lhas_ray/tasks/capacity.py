"""Whether a config's built-in stages fit their prompt spaces: every held-out set needs distinct prompts, and the
pools must be drawable around them; ``capacity_problems`` names each stage that does not fit."""

from __future__ import annotations

from collections import defaultdict

from lhas_ray.tasks.builtin import proxy_size
from lhas_ray.tasks.skills import SKILLS, distinct_prompts


def _round_robin(skills: list[str], n: int) -> dict[str, int]:
    """How many of n round-robin labels (``_balanced``) each skill gets."""
    counts: dict[str, int] = defaultdict(int)
    for j, s in enumerate(skills):
        counts[s] += len(range(j, n, len(skills)))
    return counts


def capacity_problems(cfg) -> list[str]:
    """Why the built-in stages of ``cfg`` (an ExperimentConfig) cannot have clean held-out sets: one message per
    skill and prompt space whose held-out demand exceeds half its distinct prompts (so pools keep room and
    rejection sampling stays fast); empty when they fit."""
    stages = [(i, st) for i, st in enumerate(cfg.stages) if st.source == "builtin"]
    if not stages:
        return []
    lo, hi = cfg.data.min_len, cfg.data.max_len
    demand: dict[tuple[str, str], dict[tuple[int | None, str], int]] = defaultdict(lambda: defaultdict(int))
    for i, st in stages:
        for t in st.targets:
            demand[("standard", t)][(i, "eval_size")] += st.eval_size
            for kind in st.ood:
                demand[(kind, t)][(i, "ood_size")] += st.ood_size
        for t, n in _round_robin(list(st.targets), st.probe_size).items():
            demand[("standard", t)][(i, "probe_size")] += n
    general = cfg.evaluation.general_size
    for s in SKILLS:
        if general:
            demand[("standard", s)][(None, "general_size")] += general
    if cfg.stages[0].source == "builtin":
        for s, n in _round_robin(list(SKILLS), proxy_size(cfg.training.warmup.size)).items():
            demand[("standard", s)][(None, "proxy")] += n
    spaces = {  # prompt space: (lengths, what uses it, why only half)
        "standard": ((lo, hi), "held-out sets need", "so pools keep room"),
        "format": ((lo, hi), "the 'format' OOD sets need", "so sampling stays fast"),
        "length": ((hi + 1, hi + 3), "the 'length' OOD sets need", "so sampling stays fast"),
    }
    problems = []
    for (space, skill), parts in demand.items():
        need = sum(parts.values())
        (a, b), who, why = spaces[space]
        room = distinct_prompts(skill, a, b)
        if need <= room // 2:
            continue
        owners = sorted({i for i, _ in parts if i is not None})
        if owners:
            head = f"stages.{owners[0]} ({cfg.stages[owners[0]].name})"
        else:
            head = "evaluation.general_size" if (None, "general_size") in parts else "training.warmup.size (proxy)"
        listed = ", ".join(
            f"{f'stages.{i} ' if i is not None and len(owners) > 1 else ''}{label} {n}"
            for (i, label), n in parts.items()
        )
        problems.append(
            f"{head}: {who} {need} distinct {skill!r} prompts ({listed}) but lengths {a}..{b} give only {room} (at "
            f"most half, {room // 2}, {why}); raise data.max_len or lower these sizes"
        )
    return problems
