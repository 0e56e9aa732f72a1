"""Noise in the built-in pools: near-duplicates (one symbol changed, never into a held-out prompt) and label noise
(a wrong answer of the same skill and length), both vectorised."""

from __future__ import annotations

import numpy as np

from lhas_ray.tasks.skills import (
    ANSWER_ALPHABET,
    DIGITS,
    LETTERS,
    OPS,
    SKILLS,
    cat,
    random_chars,
    skill_index,
    string_answer,
    to_str,
)

_SWAP_ROUNDS = 16  # tries to make a near-duplicate that is not a held-out prompt (else it stays an exact copy)


def _swap_last_symbol(skill: str, prompts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Change the last input letter of string-skill prompts and recompute their answers."""
    body = np.char.rstrip(np.char.partition(prompts.astype(str), ":")[:, 2], "=")
    lens = np.char.str_len(body)
    width = int(lens.max())
    mat = body.astype(f"S{width}").view(np.uint8).reshape(len(body), width).copy()
    mat[np.arange(len(body)), lens - 1] = LETTERS[rng.integers(0, len(LETTERS), size=len(body))]
    return cat(f"{OPS[skill]}:", to_str(mat), "="), to_str(string_answer(skill, mat, lens))


def near_duplicates(
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


def corrupt(skills: np.ndarray, answers: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    group = skill_index(np.asarray(skills).astype(str)) * (int(lens.max()) + 1) + lens  # (skill, answer length)
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
        mat = random_chars(rng, lens, alphabet)
        numeric = alphabet is DIGITS
        lead = numeric & (lens > 1)
        if numeric:
            mat[lead, 0] = DIGITS[1:][rng.integers(0, 9, size=int(lead.sum()))]
        same = to_str(mat) == true
        first = mat[same, 0].astype(np.int64) - int(alphabet[0])
        if numeric:  # next digit: 1..9 cycle for a leading digit of a longer number, 0..9 otherwise
            nxt = np.where(lead[same], first % 9 + 1, (first + 1) % 10)
        else:
            nxt = (first + 1) % len(alphabet)
        mat[same, 0] = alphabet[nxt]
        out[sel] = to_str(mat)
    return out
