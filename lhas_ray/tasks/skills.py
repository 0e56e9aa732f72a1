"""The built-in skills: procedural, seeded string/arithmetic tasks that share sub-structure, generated vectorised.

Skills (prompt -> answer):  copy ``cp:abc=`` -> ``abc``;  reverse ``rv:abc=`` -> ``cba``;  sort ``st:cab=`` -> ``abc``;
sort_reverse ``sr:cab=`` -> ``cba``;  add ``ad:12+34=`` -> ``46``;  reverse_add ``ra:12+34=`` -> ``64`` (21 + 43);
count ``ct:abca/a=`` -> ``2``;  lookup ``lk:a1b2c3/b=`` -> ``2``.

Related skills share an operation (reversal, ordering, digit arithmetic, scanning), so what a selector keeps at one
stage can help or hurt the next. Generation is vectorised with numpy over whole sets: no Python loop per example
beyond string assembly. ``distinct_prompts`` counts each skill's prompt space (``capacity.capacity_problems``).
"""

from __future__ import annotations

import numpy as np

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


def related_skills(targets: list[str]) -> list[str]:
    """Skills that share an operation with any target, excluding the targets themselves."""
    out = [r for t in targets for r in RELATED[t] if r not in targets]
    return sorted(set(out))


# --- vectorised string helpers ------------------------------------------------------------------------------


def to_str(mat: np.ndarray) -> np.ndarray:
    """Rows of a uint8 matrix (0 = padding at the end) -> numpy str array."""
    mat = np.ascontiguousarray(mat, dtype=np.uint8)
    return mat.view(f"S{mat.shape[1]}").ravel().astype(str)


def random_chars(rng: np.random.Generator, lens: np.ndarray, alphabet: np.ndarray) -> np.ndarray:
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


def string_answer(skill: str, mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
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


def cat(*parts: np.ndarray | str) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(out, p)
    return out


# --- skills ------------------------------------------------------------------------------------------------


def _generate_skill(skill: str, rng: np.random.Generator, n: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, answers) as str arrays for n examples of one skill with operand lengths in [lo, hi]."""
    lens = rng.integers(lo, hi + 1, size=n)
    if skill in STRING_SKILLS:
        mat = random_chars(rng, lens, LETTERS)
        return to_str(mat), to_str(string_answer(skill, mat, lens))
    if skill in ("add", "reverse_add"):
        lens_b = rng.integers(lo, hi + 1, size=n)
        a = random_chars(rng, lens, DIGITS)
        b = random_chars(rng, lens_b, DIGITS)
        a[:, 0] = DIGITS[1:][rng.integers(0, 9, size=n)]  # no leading zero
        b[:, 0] = DIGITS[1:][rng.integers(0, 9, size=n)]
        if skill == "add":
            total = _digits_to_int(a) + _digits_to_int(b)
        else:
            total = _digits_to_int(_reverse_rows(a, lens)) + _digits_to_int(_reverse_rows(b, lens_b))
        return cat(to_str(a), "+", to_str(b)), total.astype(str)
    if skill == "count":
        mat = random_chars(rng, lens, LETTERS[:4])
        query = LETTERS[:4][rng.integers(0, 4, size=n)]
        counts = (mat == query[:, None]).sum(axis=1)
        return cat(to_str(mat), "/", to_str(query[:, None])), counts.astype(str)
    if skill == "lookup":
        lens = np.minimum(lens, len(LETTERS))
        keys = rng.permuted(np.tile(LETTERS, (n, 1)), axis=1)[:, : int(lens.max())]
        vals = DIGITS[rng.integers(0, 10, size=keys.shape)]
        keys[np.arange(keys.shape[1])[None, :] >= lens[:, None]] = 0
        pairs = np.stack([keys, np.where(keys == 0, 0, vals)], axis=2).reshape(n, -1)
        pick = (rng.random(n) * lens).astype(np.int64)
        query = keys[np.arange(n), pick]
        answer = vals[np.arange(n), pick]
        return cat(to_str(pairs), "/", to_str(query[:, None])), to_str(answer[:, None])
    raise ValueError(f"unknown skill {skill!r}; built-in skills: {list(SKILLS)}")


def _prompts(skills: np.ndarray, inputs: np.ndarray, fmt: str) -> np.ndarray:
    ops = np.array([OPS[s] for s in SKILLS])[skill_index(skills)]
    sep = ":" if fmt == "standard" else " "
    return cat(ops, sep, inputs, "=")


def skill_index(skills: np.ndarray) -> np.ndarray:
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


# --- prompt spaces ---------------------------------------------------------------------------------------


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
