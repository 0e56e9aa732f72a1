"""The controlled capability suite: procedural, seeded string/arithmetic skills that share sub-structure.

Skills (prompt -> answer):  copy ``cp:abc=`` -> ``abc``;  reverse ``rv:abc=`` -> ``cba``;  sort ``st:cab=`` -> ``abc``;
sort_reverse ``sr:cab=`` -> ``cba``;  add ``ad:12+34=`` -> ``46``;  reverse_add ``ra:12+34=`` -> ``64`` (21 + 43);
count ``ct:abca/a=`` -> ``2``;  lookup ``lk:a1b2c3/b=`` -> ``2``.

Related skills share an operation (reversal, ordering, digit arithmetic, scanning), so what a selector keeps at one
stage can help or hurt the next. Generation is vectorised with numpy over whole sets: no Python loop per example
beyond string assembly. Same ``data.seed``: same tables, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

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

SPLIT_CODE = {"pool": 0, "eval": 1, "probe": 2, "ood/length": 3, "ood/format": 4, "warmup": 5, "proxy": 6}
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
    if skill in ("copy", "reverse", "sort", "sort_reverse"):
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


def _table(stage: int, split: str, code: str, skills: np.ndarray, prompts, answers, tags: list[list[str]]) -> pa.Table:
    ids = stage * _STAGE_STRIDE + SPLIT_CODE[code] * _SPLIT_STRIDE + np.arange(len(skills), dtype=np.int64)
    return pa.table(
        {
            "example_id": pa.array(ids, pa.int64()),
            "stage": pa.array(np.full(len(skills), stage, np.int32)),
            "skill": pa.array(skills.astype(str)),
            "prompt": pa.array(prompts.astype(str)),
            "answer": pa.array(answers.astype(str)),
            "split": pa.array([split] * len(skills)),
            "tags": pa.array(tags, pa.list_(pa.string())),
        },
        schema=EXAMPLE_SCHEMA,
    )


def _rng(seed: int, stage: int, code: str) -> np.random.Generator:
    return np.random.default_rng([seed, stage, SPLIT_CODE[code]])


def _balanced(skills: list[str], n: int) -> np.ndarray:
    """n skill labels spread evenly over skills (round-robin), before shuffling."""
    return np.array(skills, dtype=object)[np.arange(n) % len(skills)].astype(str) if n else np.array([], dtype=str)


def pool(spec: SuiteSpec, seed: int, lo: int, hi: int) -> pa.Table:
    """The candidate pool: target, related and unrelated skills, label noise and near-duplicates."""
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
    prompts, answers = generate(skills, rng, lo, hi)
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
    for skill in ("copy", "reverse", "sort", "sort_reverse"):  # string skills: change one symbol, recompute
        rows = dup_rows[skills[dup_rows] == skill]
        if len(rows):
            prompts[rows], answers[rows] = _swap_last_symbol(skill, prompts[rows], rng)

    # label noise: the answer of another example of the same length class, so it looks plausible
    n_noise = round(spec.pool_size * spec.noise)
    noise_rows = rng.choice(spec.pool_size, size=n_noise, replace=False)
    answers[noise_rows] = _corrupt(answers[noise_rows], rng)

    tags = [[r] for r in role.tolist()]
    for r in dup_rows.tolist():
        tags[r].append("duplicate")
    for r in noise_rows.tolist():
        tags[r].append("noise")
    order = rng.permutation(spec.pool_size)
    return _table(spec.stage, "pool", "pool", skills[order], prompts[order], answers[order], [tags[i] for i in order])


def _swap_last_symbol(skill: str, prompts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Change the last input letter of string-skill prompts and recompute their answers."""
    body = np.char.rstrip(np.char.partition(prompts.astype(str), ":")[:, 2], "=")
    lens = np.char.str_len(body)
    width = int(lens.max())
    mat = body.astype(f"S{width}").view(np.uint8).reshape(len(body), width).copy()
    mat[np.arange(len(body)), lens - 1] = LETTERS[rng.integers(0, len(LETTERS), size=len(body))]
    return _cat(f"{OPS[skill]}:", _to_str(mat), "="), _to_str(_string_answer(skill, mat, lens))


def _corrupt(answers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Wrong answers: rotate the answers among the noised rows and, where that leaves one unchanged, append a symbol."""
    if len(answers) == 0:
        return answers
    answers = answers.astype(str)
    shifted = np.roll(answers.astype(str), 1)
    same = shifted == answers
    shifted[same] = np.char.add(shifted[same], "x")
    return shifted


def eval_set(spec: SuiteSpec, seed: int, lo: int, hi: int) -> pa.Table:
    """The stage's in-distribution eval set: eval_size examples of each target skill."""
    rng = _rng(seed, spec.stage, "eval")
    skills = np.repeat(np.array(spec.targets), spec.eval_size)
    prompts, answers = generate(skills, rng, lo, hi)
    return _table(spec.stage, "eval", "eval", skills, prompts, answers, [["target"]] * len(skills))


def ood_sets(spec: SuiteSpec, seed: int, lo: int, hi: int) -> dict[str, pa.Table]:
    """OOD sets of the stage's targets: 'length' (operands longer than seen) and 'format' (unseen prompt layout)."""
    out = {}
    skills = np.repeat(np.array(spec.targets), spec.ood_size)
    for kind in spec.ood:
        rng = _rng(seed, spec.stage, f"ood/{kind}")
        if kind == "length":
            prompts, answers = generate(skills, rng, hi + 1, hi + 3)
        else:
            prompts, answers = generate(skills, rng, lo, hi, fmt="spaced")
        out[f"ood/{kind}"] = _table(spec.stage, "ood", f"ood/{kind}", skills, prompts, answers, [[kind]] * len(skills))
    return out


def probe_set(spec: SuiteSpec, seed: int, lo: int, hi: int) -> pa.Table:
    """The fixed, selector-independent probe sample of this stage (trained on briefly from checkpoint t-1)."""
    rng = _rng(seed, spec.stage, "probe")
    skills = _balanced(list(spec.targets), spec.probe_size)
    prompts, answers = generate(skills, rng, lo, hi)
    return _table(spec.stage, "probe", "probe", skills, prompts, answers, [["target"]] * len(skills))


def mixture_set(kind: str, size: int, seed: int, lo: int, hi: int) -> pa.Table:
    """A broad mixture of every skill, no noise: ``warmup`` makes the base checkpoint (stage 0); ``proxy`` is the
    future-proxy set of LHAS, a stand-in for "whatever comes next" that is never the real next stage."""
    rng = _rng(seed, 0, kind)
    skills = _balanced(list(SKILLS), size)[rng.permutation(size)]
    prompts, answers = generate(skills, rng, lo, hi)
    return _table(0, "pool", kind, skills, prompts, answers, [[kind]] * size)
