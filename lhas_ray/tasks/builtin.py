"""The controlled capability suite: procedural, seeded string/arithmetic skills that share sub-structure.

Skills (prompt -> answer):  copy ``cp:abc=`` -> ``abc``;  reverse ``rv:abc=`` -> ``cba``;  sort ``st:cab=`` -> ``abc``;
sort_reverse ``sr:cab=`` -> ``cba``;  add ``ad:12+34=`` -> ``46``;  reverse_add ``ra:12+34=`` -> ``64`` (21 + 43);
count ``ct:abca/a=`` -> ``2``;  lookup ``lk:a1b2c3/b=`` -> ``2``.

Related skills share an operation (reversal, ordering, digit arithmetic, scanning), so what a selector keeps at one
stage can help or hurt the next. Generation is vectorised with numpy over whole sets: no Python loop per example
beyond string assembly. Same ``data.seed``: same tables, byte for byte.

Data hygiene (``draw_suite``): the held-out sets (every stage's eval, probe and OOD sets, the ``general`` set over
every skill, the LHAS proxy) are drawn first, each with distinct prompts and disjoint from the ones before; pools and
the warm-up mixture are then drawn around them by vectorised rejection sampling, so no prompt a model is judged on
(or probed with) is ever a prompt it could train on. ``capacity_problems`` refuses a config whose lengths leave too
few distinct prompts for that.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lhas_ray.tasks.schema import EXAMPLE_SCHEMA

LETTERS = np.frombuffer(b"abcdefgh", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)

OPS = {
    "copy": "cp",
    "reverse": "rv",
    "sort": "st",
    "sort_reverse": "sr",
    "add": "ad",
    "reverse_add": "ra",
    "count": "ct",
    "lookup": "lk",
}
SKILLS = tuple(OPS)
STRING_SKILLS = ("copy", "reverse", "sort", "sort_reverse")
# the symbols an answer of each skill is written in (label noise falls back to random answers over these)
ANSWER_ALPHABET = {s: LETTERS if s in STRING_SKILLS else DIGITS for s in SKILLS}

RELATED: dict[str, tuple[str, ...]] = {
    "copy": ("reverse", "lookup", "sort"),
    "reverse": ("copy", "sort_reverse", "reverse_add"),
    "sort": ("sort_reverse", "copy"),
    "sort_reverse": ("sort", "reverse"),
    "add": ("reverse_add", "count"),
    "reverse_add": ("add", "reverse"),
    "count": ("add", "lookup"),
    "lookup": ("copy", "count"),
}

SPLIT_CODE = {"pool": 0, "eval": 1, "probe": 2, "ood/length": 3, "ood/format": 4, "warmup": 5, "proxy": 6, "general": 7}
_STAGE_STRIDE = 10_000_000_000
_SPLIT_STRIDE = 1_000_000_000


def related_skills(targets: list[str]) -> list[str]:
    """Skills that share an operation with any target, excluding the targets themselves."""
    out = [r for t in targets for r in RELATED[t] if r not in targets]
    return sorted(set(out))


# --- vectorised string helpers ------------------------------------------------------------------------------


def _to_str(mat: np.ndarray) -> np.ndarray:
    """Rows of a uint8 matrix (0 = padding at the end) -> numpy str array."""
    mat = np.ascontiguousarray(mat, dtype=np.uint8)
    return mat.view(f"S{mat.shape[1]}").ravel().astype(str)


def _random_chars(rng: np.random.Generator, lens: np.ndarray, alphabet: np.ndarray) -> np.ndarray:
    """A [n, max(lens)] uint8 matrix of random symbols, zero past each row's length."""
    width = int(lens.max())
    mat = alphabet[rng.integers(0, len(alphabet), size=(len(lens), width))]
    mat[np.arange(width)[None, :] >= lens[:, None]] = 0
    return mat


def _reverse_rows(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Reverse each row's first lens[i] symbols, keeping the zero padding at the end."""
    width = mat.shape[1]
    idx = lens[:, None] - 1 - np.arange(width)[None, :]
    out = np.take_along_axis(mat, np.clip(idx, 0, width - 1), axis=1)
    out[idx < 0] = 0
    return out


def _sort_rows(mat: np.ndarray) -> np.ndarray:
    """Sort each row's symbols ascending, padding kept at the end."""
    keyed = np.where(mat == 0, 255, mat)
    out = np.sort(keyed, axis=1)
    out[out == 255] = 0
    return out


def _string_answer(skill: str, mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The answer matrix of a string skill (copy, reverse, sort, sort_reverse) for input rows ``mat``."""
    if skill == "copy":
        return mat
    if skill == "reverse":
        return _reverse_rows(mat, lens)
    if skill == "sort":
        return _sort_rows(mat)
    return _reverse_rows(_sort_rows(mat), lens)


def _digits_to_int(mat: np.ndarray) -> np.ndarray:
    """Rows of ASCII digits (zero padded at the end) -> int64 values."""
    digits = np.where(mat == 0, 0, mat.astype(np.int64) - 48)
    lens = (mat != 0).sum(axis=1)
    powers = lens[:, None] - 1 - np.arange(mat.shape[1])[None, :]
    return (digits * np.where(powers >= 0, 10 ** np.clip(powers, 0, 18), 0)).sum(axis=1)


def _cat(*parts: np.ndarray | str) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(out, p)
    return out


# --- skills ------------------------------------------------------------------------------------------------


def _generate_skill(skill: str, rng: np.random.Generator, n: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, answers) as str arrays for n examples of one skill with operand lengths in [lo, hi]."""
    lens = rng.integers(lo, hi + 1, size=n)
    if skill in STRING_SKILLS:
        mat = _random_chars(rng, lens, LETTERS)
        return _to_str(mat), _to_str(_string_answer(skill, mat, lens))
    if skill in ("add", "reverse_add"):
        lens_b = rng.integers(lo, hi + 1, size=n)
        a = _random_chars(rng, lens, DIGITS)
        b = _random_chars(rng, lens_b, DIGITS)
        a[:, 0] = DIGITS[1:][rng.integers(0, 9, size=n)]  # no leading zero
        b[:, 0] = DIGITS[1:][rng.integers(0, 9, size=n)]
        if skill == "add":
            total = _digits_to_int(a) + _digits_to_int(b)
        else:
            total = _digits_to_int(_reverse_rows(a, lens)) + _digits_to_int(_reverse_rows(b, lens_b))
        return _cat(_to_str(a), "+", _to_str(b)), total.astype(str)
    if skill == "count":
        mat = _random_chars(rng, lens, LETTERS[:4])
        query = LETTERS[:4][rng.integers(0, 4, size=n)]
        counts = (mat == query[:, None]).sum(axis=1)
        return _cat(_to_str(mat), "/", _to_str(query[:, None])), counts.astype(str)
    if skill == "lookup":
        lens = np.minimum(lens, len(LETTERS))
        keys = rng.permuted(np.tile(LETTERS, (n, 1)), axis=1)[:, : int(lens.max())]
        vals = DIGITS[rng.integers(0, 10, size=keys.shape)]
        keys[np.arange(keys.shape[1])[None, :] >= lens[:, None]] = 0
        pairs = np.stack([keys, np.where(keys == 0, 0, vals)], axis=2).reshape(n, -1)
        pick = (rng.random(n) * lens).astype(np.int64)
        query = keys[np.arange(n), pick]
        answer = vals[np.arange(n), pick]
        return _cat(_to_str(pairs), "/", _to_str(query[:, None])), _to_str(answer[:, None])
    raise ValueError(f"unknown skill {skill!r}; built-in skills: {list(SKILLS)}")


def _prompts(skills: np.ndarray, inputs: np.ndarray, fmt: str) -> np.ndarray:
    ops = np.array([OPS[s] for s in SKILLS])[_skill_index(skills)]
    sep = ":" if fmt == "standard" else " "
    return _cat(ops, sep, inputs, "=")


def _skill_index(skills: np.ndarray) -> np.ndarray:
    """Position of each row's skill in SKILLS (vectorised through the few distinct values)."""
    uniq, inv = np.unique(skills, return_inverse=True)
    return np.array([SKILLS.index(s) for s in uniq], dtype=np.int64)[inv]


def generate(
    skills: np.ndarray, rng: np.random.Generator, lo: int, hi: int, fmt: str = "standard"
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts and answers for a given skill per row (one vectorised batch per distinct skill)."""
    inputs = np.empty(len(skills), dtype=object)
    answers = np.empty(len(skills), dtype=object)
    for skill in SKILLS:  # a loop over the 8 skills, not over examples
        rows = np.flatnonzero(skills == skill)
        if len(rows):
            x, y = _generate_skill(skill, rng, len(rows), lo, hi)
            inputs[rows], answers[rows] = x, y
    return _prompts(skills, inputs.astype(str), fmt), answers.astype(str)


# --- sets --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSpec:
    """What the suite needs to know about one stage (a view of the config, so tasks do not import it)."""

    stage: int
    targets: tuple[str, ...]
    pool_size: int
    target_share: float
    related_share: float
    noise: float
    duplicates: float
    eval_size: int
    ood: tuple[str, ...]
    ood_size: int
    probe_size: int


def spec_from_stage(stage: int, st) -> SuiteSpec:
    """The SuiteSpec of a built-in stage config (``StageConfig``; ``stage`` is 1-based)."""
    return SuiteSpec(
        stage=stage,
        targets=tuple(st.targets),
        pool_size=st.pool.size,
        target_share=st.pool.target_share,
        related_share=st.pool.related_share,
        noise=st.pool.noise,
        duplicates=st.pool.duplicates,
        eval_size=st.eval_size,
        ood=tuple(st.ood),
        ood_size=st.ood_size,
        probe_size=st.probe_size,
    )


def proxy_size(warmup_size: int) -> int:
    """Size of the built-in LHAS future-proxy mixture for a given warm-up size."""
    return max(64, min(warmup_size, 512))


def _table(stage: int, split: str, code: str, skills: np.ndarray, prompts, answers, tags) -> pa.Table:
    ids = stage * _STAGE_STRIDE + SPLIT_CODE[code] * _SPLIT_STRIDE + np.arange(len(skills), dtype=np.int64)
    return pa.table(
        {
            "example_id": pa.array(ids, pa.int64()),
            "stage": pa.array(np.full(len(skills), stage, np.int32)),
            "skill": pa.array(np.asarray(skills).astype(str), pa.string()),
            "prompt": pa.array(np.asarray(prompts).astype(str), pa.string()),
            "answer": pa.array(np.asarray(answers).astype(str), pa.string()),
            "split": pa.array([split] * len(skills), pa.string()),
            "tags": tags if isinstance(tags, pa.Array) else pa.array(tags, pa.list_(pa.string())),
        },
        schema=EXAMPLE_SCHEMA,
    )


def _tag_lists(first: np.ndarray, **flags: np.ndarray) -> pa.Array:
    """Per-row tag lists: ``first[i]``, then each flag's name where that row's flag is set (vectorised)."""
    cols = [np.asarray(first, dtype=object)] + [np.where(m, name, None) for name, m in flags.items()]
    mat = np.stack(cols, axis=1)
    keep = mat != None  # noqa: E711 (element-wise)
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    values = pa.array(mat[keep].astype(str).tolist() if keep.any() else [], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=pa.list_(pa.string()))


def _rng(seed: int, stage: int, code: str) -> np.random.Generator:
    return np.random.default_rng([seed, stage, SPLIT_CODE[code]])


def _balanced(skills: list[str], n: int) -> np.ndarray:
    """n skill labels spread evenly over skills (round-robin), before shuffling."""
    return np.array(skills, dtype=object)[np.arange(n) % len(skills)].astype(str) if n else np.array([], dtype=str)


def _prompt_array(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("prompt").to_numpy(zero_copy_only=False)).astype(str)


_MAX_ROUNDS = 1000  # rejection-sampling rounds before a set that cannot be filled is an error
_SWAP_ROUNDS = 16  # tries to make a near-duplicate that is not a held-out prompt (else it stays an exact copy)


def _draw(
    skills: np.ndarray,
    rng: np.random.Generator,
    lo: int,
    hi: int,
    fmt: str = "standard",
    exclude: np.ndarray | None = None,
    distinct: bool = False,
    where: str = "set",
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts and answers for ``skills`` (one row each) whose prompts avoid ``exclude`` and, when ``distinct``, each
    other: a vectorised batch, then only the rejected rows are drawn again (same skill), for a bounded number of
    rounds."""
    n = len(skills)
    if n == 0:
        return np.array([], dtype=str), np.array([], dtype=str)
    prompts = np.empty(n, dtype=object)
    answers = np.empty(n, dtype=object)
    taken = np.asarray(exclude if exclude is not None else [], dtype=str)
    pending = np.arange(n)
    for _ in range(_MAX_ROUNDS):
        p, a = generate(skills[pending], rng, lo, hi, fmt)
        bad = np.isin(p, taken) if len(taken) else np.zeros(len(p), dtype=bool)
        if distinct:
            first = np.zeros(len(p), dtype=bool)
            first[np.unique(p, return_index=True)[1]] = True
            bad |= ~first
        ok = ~bad
        prompts[pending[ok]], answers[pending[ok]] = p[ok], a[ok]
        if distinct:
            taken = np.concatenate([taken, p[ok]])
        pending = pending[bad]
        if not len(pending):
            return prompts.astype(str), answers.astype(str)
    short = sorted(set(skills[pending].tolist()))
    raise ValueError(
        f"{where}: could not draw {len(pending)} of {n} examples of {short} whose prompts are "
        f"{'distinct and ' if distinct else ''}outside the held-out sets after {_MAX_ROUNDS} rounds: lengths "
        f"{lo}..{hi} leave too few distinct prompts; raise data.max_len or lower eval/probe/ood/general sizes"
    )


def pool(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The candidate pool: target, related and unrelated skills, label noise and near-duplicates.

    No pool prompt (near-duplicates included) is in ``exclude`` (the held-out prompts); pool rows may repeat each
    other, which is what near-duplicates are for.
    """
    rng = _rng(seed, spec.stage, "pool")
    targets = list(spec.targets)
    related = related_skills(targets)
    unrelated = [s for s in SKILLS if s not in targets and s not in related]
    n_target = round(spec.pool_size * spec.target_share)
    n_related = round(spec.pool_size * spec.related_share) if related else 0
    n_unrelated = spec.pool_size - n_target - n_related
    groups = [
        (targets, n_target, "target"),
        (related, n_related, "related"),
        (unrelated or related or targets, n_unrelated, "unrelated"),
    ]
    skills = np.concatenate([_balanced(g, n) for g, n, _ in groups])
    role = np.concatenate([np.full(n, name) for _, n, name in groups])
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, where=f"stage {spec.stage} pool")
    prompts, answers = prompts.astype(object), answers.astype(object)  # edits below may change string widths

    # near-duplicates of other pool rows: string skills get one input symbol changed (answer recomputed),
    # the others are exact copies
    n_dup = round(spec.pool_size * spec.duplicates)
    dup_rows = rng.choice(spec.pool_size, size=n_dup, replace=False)
    sources = rng.integers(0, spec.pool_size, size=n_dup)
    sources = np.where(sources == dup_rows, (sources + 1) % spec.pool_size, sources)
    skills[dup_rows] = skills[sources]
    role[dup_rows] = role[sources]
    prompts[dup_rows], answers[dup_rows] = prompts[sources], answers[sources]
    for skill in STRING_SKILLS:  # string skills: change one symbol, recompute
        rows = dup_rows[skills[dup_rows] == skill]
        if len(rows):
            prompts[rows], answers[rows] = _near_duplicates(skill, prompts[rows], answers[rows], rng, exclude)

    # label noise: the answer of another example of the same skill and answer length, so it looks plausible
    n_noise = round(spec.pool_size * spec.noise)
    noise_rows = rng.choice(spec.pool_size, size=n_noise, replace=False)
    answers[noise_rows] = _corrupt(skills, answers, noise_rows, rng)

    is_dup = np.zeros(spec.pool_size, dtype=bool)
    is_dup[dup_rows] = True
    is_noise = np.zeros(spec.pool_size, dtype=bool)
    is_noise[noise_rows] = True
    order = rng.permutation(spec.pool_size)
    tags = _tag_lists(role[order], duplicate=is_dup[order], noise=is_noise[order])
    return _table(spec.stage, "pool", "pool", skills[order], prompts[order], answers[order], tags)


def _swap_last_symbol(skill: str, prompts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Change the last input letter of string-skill prompts and recompute their answers."""
    body = np.char.rstrip(np.char.partition(prompts.astype(str), ":")[:, 2], "=")
    lens = np.char.str_len(body)
    width = int(lens.max())
    mat = body.astype(f"S{width}").view(np.uint8).reshape(len(body), width).copy()
    mat[np.arange(len(body)), lens - 1] = LETTERS[rng.integers(0, len(LETTERS), size=len(body))]
    return _cat(f"{OPS[skill]}:", _to_str(mat), "="), _to_str(_string_answer(skill, mat, lens))


def _near_duplicates(
    skill: str, prompts: np.ndarray, answers: np.ndarray, rng: np.random.Generator, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicates of pool rows (last symbol changed) whose prompts avoid ``exclude``: rows that hit a held-out
    prompt are tried again, and after ``_SWAP_ROUNDS`` stay exact copies of their (pool) source."""
    new_p, new_a = (x.astype(object) for x in _swap_last_symbol(skill, prompts, rng))
    if exclude is None or not len(exclude):
        return new_p, new_a
    pending = np.flatnonzero(np.isin(new_p.astype(str), exclude))
    for _ in range(_SWAP_ROUNDS):
        if not len(pending):
            break
        p, a = _swap_last_symbol(skill, prompts[pending], rng)
        hit = np.isin(p, exclude)
        new_p[pending[~hit]], new_a[pending[~hit]] = p[~hit], a[~hit]
        pending = pending[hit]
    new_p[pending], new_a[pending] = prompts[pending], answers[pending]
    return new_p, new_a


def _corrupt(skills: np.ndarray, answers: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Wrong answers for ``rows``: the answer of another example of the same skill and the same answer length, drawn
    uniformly among those whose answer differs from the row's own; where there is none, a random answer of that
    length over the skill's answer alphabet (no leading zero for numbers), different from the true one.

    ``skills``/``answers`` are the whole set's (the donors); the true answers are not modified.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.array([], dtype=object)
    answers = np.asarray(answers).astype(str)
    lens = np.char.str_len(answers).astype(np.int64)
    uniq, code = np.unique(answers, return_inverse=True)
    m = len(uniq)
    group = _skill_index(np.asarray(skills).astype(str)) * (int(lens.max()) + 1) + lens  # (skill, answer length)
    composite = group * m + code  # sorted: groups, then equal answers together inside a group
    order = np.argsort(composite, kind="stable")
    srt = composite[order]
    g = group[rows]
    g_lo, g_hi = np.searchsorted(srt, g * m, "left"), np.searchsorted(srt, (g + 1) * m, "left")
    e_lo, e_hi = np.searchsorted(srt, composite[rows], "left"), np.searchsorted(srt, composite[rows], "right")
    n_other = (g_hi - g_lo) - (e_hi - e_lo)
    r = np.minimum((rng.random(len(rows)) * np.maximum(n_other, 1)).astype(np.int64), np.maximum(n_other - 1, 0))
    pos = np.where(r < e_lo - g_lo, g_lo + r, g_lo + r + (e_hi - e_lo))
    out = answers[order[np.minimum(pos, len(answers) - 1)]].astype(object)
    none = n_other == 0
    if none.any():
        out[none] = _random_other(np.asarray(skills).astype(str)[rows[none]], answers[rows[none]], rng)
    return out


def _random_other(skills: np.ndarray, answers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random answer of the same length over each row's skill alphabet, different from ``answers``."""
    out = np.empty(len(answers), dtype=object)
    for skill in SKILLS:  # a loop over the skills, not over examples
        sel = np.flatnonzero(skills == skill)
        if not len(sel):
            continue
        alphabet = ANSWER_ALPHABET[skill]
        true = answers[sel].astype(str)
        lens = np.char.str_len(true)
        mat = _random_chars(rng, lens, alphabet)
        numeric = alphabet is DIGITS
        lead = numeric & (lens > 1)
        if numeric:
            mat[lead, 0] = DIGITS[1:][rng.integers(0, 9, size=int(lead.sum()))]
        same = _to_str(mat) == true
        first = mat[same, 0].astype(np.int64) - int(alphabet[0])
        if numeric:  # next digit: 1..9 cycle for a leading digit of a longer number, 0..9 otherwise
            nxt = np.where(lead[same], first % 9 + 1, (first + 1) % 10)
        else:
            nxt = (first + 1) % len(alphabet)
        mat[same, 0] = alphabet[nxt]
        out[sel] = _to_str(mat)
    return out


def eval_set(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The stage's in-distribution eval set: eval_size examples of each target skill, distinct prompts, none in
    ``exclude``."""
    rng = _rng(seed, spec.stage, "eval")
    skills = np.repeat(np.array(spec.targets), spec.eval_size)
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=True, where=f"stage {spec.stage} eval")
    return _table(spec.stage, "eval", "eval", skills, prompts, answers, [["target"]] * len(skills))


def ood_sets(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> dict[str, pa.Table]:
    """OOD sets of the stage's targets: 'length' (operands longer than seen) and 'format' (unseen prompt layout);
    distinct prompts, none in ``exclude`` nor in another of these sets."""
    out = {}
    taken = np.asarray(exclude if exclude is not None else [], dtype=str)
    skills = np.repeat(np.array(spec.targets), spec.ood_size)
    for kind in spec.ood:
        rng = _rng(seed, spec.stage, f"ood/{kind}")
        where = f"stage {spec.stage} ood/{kind}"
        if kind == "length":
            prompts, answers = _draw(skills, rng, hi + 1, hi + 3, exclude=taken, distinct=True, where=where)
        else:
            prompts, answers = _draw(skills, rng, lo, hi, "spaced", exclude=taken, distinct=True, where=where)
        taken = np.concatenate([taken, prompts])
        out[f"ood/{kind}"] = _table(spec.stage, "ood", f"ood/{kind}", skills, prompts, answers, [[kind]] * len(skills))
    return out


def probe_set(spec: SuiteSpec, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The fixed, selector-independent probe sample of this stage (trained on briefly from checkpoint t-1);
    distinct prompts, none in ``exclude``."""
    rng = _rng(seed, spec.stage, "probe")
    skills = _balanced(list(spec.targets), spec.probe_size)
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=True, where=f"stage {spec.stage} probe")
    return _table(spec.stage, "probe", "probe", skills, prompts, answers, [["target"]] * len(skills))


def mixture_set(kind: str, size: int, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """A broad mixture of every skill, no noise: ``warmup`` makes the base checkpoint (stage 0); ``proxy`` is the
    future-proxy set of LHAS, a stand-in for "whatever comes next" that is never the real next stage.

    No prompt is in ``exclude``; the proxy (held out from training) also has distinct prompts, the warm-up (training
    data, like a pool) may repeat them.
    """
    rng = _rng(seed, 0, kind)
    skills = _balanced(list(SKILLS), size)[rng.permutation(size)]
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=kind != "warmup", where=kind)
    return _table(0, "pool", kind, skills, prompts, answers, [[kind]] * size)


def general_set(size: int, seed: int, lo: int, hi: int, exclude: np.ndarray | None = None) -> pa.Table:
    """The 'general' eval set: ``size`` examples of every skill (targeted or not), in-distribution lengths, standard
    format, distinct prompts, none in ``exclude``; stage 0, split 'eval', tag 'general'."""
    rng = _rng(seed, 0, "general")
    skills = np.repeat(np.array(SKILLS), size)
    prompts, answers = _draw(skills, rng, lo, hi, exclude=exclude, distinct=True, where="general")
    return _table(0, "eval", "general", skills, prompts, answers, [["general"]] * len(skills))


@dataclass
class DrawnSuite:
    """Every built-in set of a run, keyed by 1-based stage; ``heldout`` is every held-out prompt."""

    pools: dict[int, pa.Table] = field(default_factory=dict)
    evals: dict[int, pa.Table] = field(default_factory=dict)
    probes: dict[int, pa.Table] = field(default_factory=dict)
    oods: dict[int, dict[str, pa.Table]] = field(default_factory=dict)
    general: pa.Table = field(default_factory=EXAMPLE_SCHEMA.empty_table)
    proxy: pa.Table | None = None
    warmup: pa.Table | None = None
    heldout: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))


def draw_suite(
    specs: list[SuiteSpec],
    seed: int,
    lo: int,
    hi: int,
    *,
    general_size: int = 0,
    warmup_size: int | None = None,
    proxy_size: int | None = None,
) -> DrawnSuite:
    """The built-in sets of a run, held-out sets first: every stage's eval, probe and OOD sets, then the general
    set and the proxy, each with distinct prompts and disjoint from those before; then every pool and the warm-up
    mixture, drawn around all of them (pools and warm-up may share prompts: both are training data).

    ``warmup_size``/``proxy_size`` None: no warm-up/proxy mixture (a run whose first stage is not built-in).
    """
    out = DrawnSuite()
    taken = out.heldout

    def hold(table: pa.Table) -> pa.Table:
        nonlocal taken
        taken = np.concatenate([taken, _prompt_array(table)])
        return table

    for spec in specs:
        out.evals[spec.stage] = hold(eval_set(spec, seed, lo, hi, taken))
        out.probes[spec.stage] = hold(probe_set(spec, seed, lo, hi, taken))
        out.oods[spec.stage] = {k: hold(t) for k, t in ood_sets(spec, seed, lo, hi, taken).items()}
    if specs and general_size:
        out.general = hold(general_set(general_size, seed, lo, hi, taken))
    if proxy_size:
        out.proxy = hold(mixture_set("proxy", proxy_size, seed, lo, hi, taken))
    out.heldout = taken
    for spec in specs:
        out.pools[spec.stage] = pool(spec, seed, lo, hi, taken)
    if warmup_size:
        out.warmup = mixture_set("warmup", warmup_size, seed, lo, hi, taken)
    return out


# --- capacity ----------------------------------------------------------------------------------------------


def distinct_prompts(skill: str, lo: int, hi: int) -> int:
    """How many distinct prompts (one format) a skill has with operand lengths lo..hi, counted combinatorially."""
    if skill in STRING_SKILLS:  # any string over the 8 letters
        return sum(len(LETTERS) ** n for n in range(lo, hi + 1))
    if skill in ("add", "reverse_add"):  # two operands, each without a leading zero
        per = sum(9 * 10 ** (n - 1) for n in range(lo, hi + 1))
        return per * per
    if skill == "count":  # a string over 4 letters and one of them as the query
        return sum(4**n for n in range(lo, hi + 1)) * 4
    if skill == "lookup":  # n distinct ordered keys (at most 8), a digit each, one key queried
        lens = sorted({min(n, len(LETTERS)) for n in range(lo, hi + 1)})
        return sum(_falling(len(LETTERS), n) * 10**n * n for n in lens)
    raise ValueError(f"unknown skill {skill!r}; built-in skills: {list(SKILLS)}")


def _falling(n: int, k: int) -> int:
    out = 1
    for i in range(k):
        out *= n - i
    return out


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
