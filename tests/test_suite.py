"""The built-in suite: correct answers, deterministic per seed, different across seeds, the pool mix the config sets."""

from __future__ import annotations

import numpy as np
import pytest

from lhas_ray.config import load_config
from lhas_ray.tasks import builtin as b
from lhas_ray.tasks.schema import EXAMPLE_SCHEMA
from lhas_ray.tasks.suite import build_suite
from tests.helpers import reference_answer


def _spec(**kw) -> b.SuiteSpec:
    base = dict(
        stage=1,
        targets=("reverse",),
        pool_size=1000,
        target_share=0.4,
        related_share=0.3,
        noise=0.1,
        duplicates=0.05,
        eval_size=20,
        ood=("length", "format"),
        ood_size=10,
        probe_size=30,
    )
    return b.SuiteSpec(**{**base, **kw})


@pytest.mark.parametrize("skill", b.SKILLS)
def test_every_skill_answers_correctly(skill):
    rng = np.random.default_rng(1)
    prompts, answers = b.generate(np.array([skill] * 200), rng, 1, 6)
    for p, a in zip(prompts, answers, strict=True):
        op, body = p.split(":", 1)
        assert op == b.OPS[skill]
        assert a == reference_answer(skill, body.rstrip("=")), p


def test_same_seed_same_bytes_other_seed_differs():
    cfg = load_config("demo")
    one, two = build_suite(cfg), build_suite(cfg)
    for s1, s2 in zip(one.stages, two.stages, strict=True):
        assert s1.pool.equals(s2.pool) and s1.eval.equals(s2.eval) and s1.probe.equals(s2.probe)
    assert one.general.equals(two.general) and one.warmup.equals(two.warmup) and one.proxy.equals(two.proxy)
    other = build_suite(load_config("demo", ["data.seed=1"]))
    assert not other.stages[0].pool.equals(one.stages[0].pool)


def test_pool_mix_noise_and_duplicates_follow_the_config():
    pool = b.pool(_spec(), seed=0, lo=2, hi=5).to_pandas()
    assert len(pool) == 1000 and pool.example_id.is_unique
    roles = pool.tags.map(lambda t: t[0]).value_counts()
    assert abs(roles["target"] - 400) <= 50 and abs(roles["related"] - 300) <= 50
    assert set(pool[pool.tags.map(lambda t: t[0] == "related")].skill) <= set(b.related_skills(["reverse"]))
    noisy = pool[pool.tags.map(lambda t: "noise" in t)]
    assert len(noisy) == 100
    wrong = [
        a != reference_answer(s, p.split(":", 1)[1].rstrip("="))
        for s, p, a in zip(noisy.skill, noisy.prompt, noisy.answer, strict=True)
    ]
    assert np.mean(wrong) > 0.9  # noised labels are wrong
    clean = pool[pool.tags.map(lambda t: "noise" not in t)]
    right = [
        a == reference_answer(s, p.split(":", 1)[1].rstrip("="))
        for s, p, a in zip(clean.skill, clean.prompt, clean.answer, strict=True)
    ]
    assert all(right)
    assert pool.tags.map(lambda t: "duplicate" in t).sum() == 50


def test_ood_sets_are_longer_or_reformatted_and_probe_is_fixed():
    spec = _spec()
    ood = b.ood_sets(spec, 0, 2, 5)
    lengths = [len(p.split(":", 1)[1]) - 1 for p in ood["ood/length"].column("prompt").to_pylist()]
    assert min(lengths) > 5
    assert all(":" not in p for p in ood["ood/format"].column("prompt").to_pylist())
    assert b.probe_set(spec, 0, 2, 5).equals(b.probe_set(spec, 0, 2, 5))


def test_tables_follow_the_schema_and_ids_are_unique_across_sets():
    suite = build_suite(load_config("demo"))
    tables = [suite.warmup, suite.proxy, suite.general]
    tables += [t for s in suite.stages for t in (s.pool, s.eval, s.probe, *s.ood.values())]
    assert suite.general.num_rows == 50 * len(b.SKILLS)
    ids = np.concatenate([t.column("example_id").to_numpy() for t in tables])
    assert len(np.unique(ids)) == len(ids)
    assert all(t.schema.equals(EXAMPLE_SCHEMA) for t in tables)


def test_text_stages_build_from_the_standard_library_and_pydoc():
    from lhas_ray.config import config_from_dict
    from lhas_ray.tasks import text

    raw = {
        "stages": [
            {
                "name": "code",
                "source": "text",
                "targets": ["code"],
                "budget": 20,
                "pool": {"size": 60},
                "eval_size": 10,
                "ood_size": 5,
                "probe_size": 8,
                "text": {"mix": {"code": 0.5, "docs": 0.5}, "max_chars": 64, "ood_domains": ["docs"]},
            }
        ],
        "selectors": [{"name": "random"}],
        "evaluation": {"accuracy": "token"},
    }
    suite = build_suite(config_from_dict(raw))
    stage = suite.stages[0]
    assert stage.pool.num_rows == 60 and set(stage.pool.column("skill").to_pylist()) == {"code", "docs"}
    assert stage.eval.num_rows == 10 and set(stage.ood) == {"ood/docs"}
    assert stage.probe.num_rows == 8 and suite.proxy.num_rows > 0
    # the general set: held-out text of every domain of the stage (50 each), skill = the domain
    assert suite.general.column("skill").to_pylist() == ["code"] * 50 + ["docs"] * 50
    assert set(suite.general.column("answer").to_pylist()) <= set(text.chunks("code", 64, heldout=True).texts) | set(
        text.chunks("docs", 64, heldout=True).texts
    )
    tables = (stage.pool, stage.eval, stage.probe, suite.general, *stage.ood.values())
    ids = np.concatenate([t.column("example_id").to_numpy() for t in tables])
    assert len(np.unique(ids)) == len(ids)
    # held-out text never shares a chunk with training text; the pool never holds a probe chunk either
    pool_text = set(stage.pool.column("answer").to_pylist())
    for held in (stage.eval, stage.probe, suite.general, *stage.ood.values()):
        assert not set(held.column("answer").to_pylist()) & pool_text
    assert stage.pool.num_rows == 60 - suite.removed_from_pools[1]


def test_unknown_text_domain_names_the_domains():
    from lhas_ray.config import ConfigError, config_from_dict

    raw = {
        "stages": [
            {"name": "x", "source": "text", "targets": ["poetry"], "budget": 1, "text": {"mix": {"poetry": 1.0}}}
        ],
        "selectors": [{"name": "random"}],
    }
    with pytest.raises(ConfigError, match=r"unknown text domain.*poetry.*code"):
        config_from_dict(raw)
