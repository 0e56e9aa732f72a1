"""Every kind of bad input is refused by the CLI with its field path before Ray starts, and writes nothing.

Each case mutates a valid config (the packaged demo, or a one-stage HF config on local files this test writes), runs
``lhas-ray run`` (``tune`` for sweep settings) in-process with ``ray.init`` replaced by a function that fails the test,
and checks the exit code, the field path and the reason in the message, and that the output folder was not created.
"""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lhas_ray.cli import main
from lhas_ray.config import PACKAGED_CONFIGS

DEMO = yaml.safe_load((PACKAGED_CONFIGS / "demo.yaml").read_text())
ROWS = [{"q": f"What is {i} times 7?", "a": str(7 * i), "tag": "math"} for i in range(60)]


def _write_data(tmp):
    (tmp / "pool.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[:40]) + "\n")
    pq.write_table(pa.Table.from_pylist(ROWS[40:]), tmp / "eval.parquet")
    (tmp / "eval.csv").write_text("q,a\n" + "\n".join(f"{r['q'].replace(',', '')},{r['a']}" for r in ROWS[40:]))
    (tmp / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    (tmp / "empty_model").mkdir()


def _hf(tmp) -> dict:
    """One HF stage on local files: a jsonl pool, a parquet eval set."""

    def spec(builder, name):
        return {"path": builder, "data_files": str(tmp / name), "columns": {"prompt": "q", "answer": "a"}}

    stage = {
        "name": "math",
        "source": "hf",
        "targets": ["math"],
        "budget": 10,
        "pool": {"size": 40},
        "eval_size": 8,
        "probe_size": 4,
        "ood": [],
        "hf": {"pool": spec("json", "pool.jsonl"), "eval": spec("parquet", "eval.parquet")},
    }
    return {"stages": [stage], "selectors": [{"name": "random"}], "evaluation": {"accuracy": "token"}}


def _lhas(**params):
    return lambda c, t: c.update(selectors=[{"name": "random"}, {"name": "lhas", "params": params}])


def _sel(name, **params):
    return lambda c, t: c.update(selectors=[{"name": name, "params": params}])


def _set(path, value):
    """Set a dotted path (list items by index) in the raw config."""

    def apply(c, t):
        node, parts = c, path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value(t) if callable(value) else value

    return apply


def _space(params):
    def apply(c, t):
        (t / "space.yaml").write_text(yaml.safe_dump({"params": params}))
        c.setdefault("tune", {})["space"] = str(t / "space.yaml")

    return apply


# (id, base, command, mutation, field path in the message, reason in the message)
CASES = [
    ("unknown-param", "demo", "run", _lhas(l_x=1), "selectors.1.params.l_x", "no such parameter"),
    ("negative-weight", "demo", "run", _lhas(l_u=-5), "selectors.1.params.l_u", "got -5"),
    ("weight-not-number", "demo", "run", _lhas(l_u="high"), "selectors.1.params.l_u", "finite float"),
    ("infinite-weight", "demo", "run", _lhas(l_c=float("inf")), "selectors.1.params.l_c", "finite float"),
    ("bool-weight", "demo", "run", _lhas(l_f=True), "selectors.1.params.l_f", "finite float"),
    ("bad-choice", "demo", "run", _lhas(utility="bogus"), "selectors.1.params.utility", "one of"),
    ("zero-clusters", "demo", "run", _lhas(n_clusters=0), "selectors.1.params.n_clusters", "integer >= 1"),
    ("float-clusters", "demo", "run", _lhas(n_clusters=2.5), "selectors.1.params.n_clusters", "integer >= 1"),
    ("all-weights-zero", "demo", "run", _lhas(l_u=0, l_c=0, l_f=0, l_a=0), "selectors.1.params", "at least one"),
    ("bad-greedy", "demo", "run", _sel("facility_location", greedy="eager"), "selectors.0.params.greedy", "one of"),
    ("epsilon-zero", "demo", "run", _sel("facility_location", epsilon=0), "selectors.0.params.epsilon", "(0.0, 1.0]"),
    ("threshold-range", "demo", "run", _sel("utility_diversity", threshold=1.5), "params.threshold", "[-1.0, 1.0]"),
    ("param-on-paramless", "demo", "run", _sel("loss_high", seed=1), "selectors.0.params.seed", "allowed parameters"),
    ("unknown-selector", "demo", "run", _sel("oracle"), "selectors.0.name", "unknown selector 'oracle'"),
    (
        "duplicate-selector",
        "demo",
        "run",
        lambda c, t: c.update(selectors=[{"name": "random"}, {"name": "random"}]),
        "selectors",
        "distinct 'label's",
    ),
    ("negative-seed", "demo", "run", _set("seeds", [-1]), "seeds.0", "greater than or equal to 0"),
    ("repeated-seed", "demo", "run", _set("seeds", [1, 1]), "seeds", "distinct"),
    ("no-seeds", "demo", "run", _set("seeds", []), "seeds", "at least 1"),
    ("lr-negative", "demo", "run", _set("training.lr", -0.1), "training.lr", "greater than 0"),
    ("unknown-key", "demo", "run", _set("training.lrr", 0.1), "training.lrr", "unknown key"),
    ("budget-over-pool", "demo", "run", _set("stages.0.budget", 10**6), "stages.0", "larger than the pool"),
    ("unknown-skill", "demo", "run", _set("stages.0.targets", ["flying"]), "stages.0.targets", "built-in skills"),
    (
        "batch-vs-workers",
        "demo",
        "run",
        _set("training", {**DEMO["training"], "num_workers": 2, "batch_size": 33}),
        "training",
        "multiple of num_workers",
    ),
    ("no-model-folder", "demo", "run", _set("model.name", "/no/such/model"), "model.name", "no such folder"),
    ("not-a-hub-id", "demo", "run", _set("model.name", "a/b/c"), "model.name", "nor a Hub id"),
    (
        "folder-without-config",
        "demo",
        "run",
        _set("model.name", lambda t: str(t / "empty_model")),
        "model.name",
        "no config.json",
    ),
    (
        "missing-data-file",
        "hf",
        "run",
        _set("stages.0.hf.pool.data_files", lambda t: str(t / "nope-*.jsonl")),
        "stages.0.hf.pool.data_files",
        "matches no file",
    ),
    (
        "jsonl-missing-column",
        "hf",
        "run",
        _set("stages.0.hf.pool.columns.answer", "ans"),
        "stages.0.hf.pool.columns.answer",
        "column 'ans' is not in",
    ),
    (
        "parquet-missing-column",
        "hf",
        "run",
        _set("stages.0.hf.eval.columns.prompt", "question"),
        "stages.0.hf.eval.columns.prompt",
        "its columns: ['q', 'a', 'tag']",
    ),
    (
        "csv-missing-skill-column",
        "hf",
        "run",
        lambda c, t: c["stages"][0]["hf"]["eval"].update(
            path="csv", data_files=str(t / "eval.csv"), columns={"prompt": "q", "answer": "a", "skill": "tag"}
        ),
        "stages.0.hf.eval.columns.skill",
        "column 'tag' is not in",
    ),
    (
        "unreadable-parquet",
        "hf",
        "run",
        _set("stages.0.hf.eval.data_files", lambda t: str(t / "broken.parquet")),
        "stages.0.hf.eval.data_files",
        "cannot read",
    ),
    (
        "builder-without-files",
        "hf",
        "run",
        _set("stages.0.hf.pool.data_files", None),
        "stages.0.hf.pool",
        "give data_files",
    ),
    ("missing-space", "demo", "tune", _set("tune.space", "no_such_space"), "search space file", "not found"),
    (
        "space-below-spec",
        "demo",
        "tune",
        _space({"l_u": {"type": "uniform", "low": -1, "high": 1}}),
        "params.l_u.low",
        "must be a finite float in [0.0",
    ),
    (
        "space-unknown-param",
        "demo",
        "tune",
        _space({"l_x": {"type": "uniform", "low": 0, "high": 1}}),
        "params.l_x",
        "has no parameter",
    ),
    (
        "space-bad-choice",
        "demo",
        "tune",
        _space({"proxy": {"type": "choice", "values": ["replay", "oracle"]}}),
        "params.proxy.values",
        "'oracle'",
    ),
    ("bad-objective", "demo", "tune", _set("tune.objective", "acc - os.system"), "tune.objective", "os"),
    ("heldout-overlap", "demo", "tune", _set("tune.heldout_seeds", [0, 9]), "tune.heldout_seeds", "[0]"),
    (
        "heldout-negative",
        "demo",
        "tune",
        _set("tune.heldout_seeds", [-3]),
        "tune.heldout_seeds.0",
        "greater than or equal to 0",
    ),
    (
        "unknown-baseline",
        "demo",
        "tune",
        lambda c, t: c.setdefault("tune", {}).update(heldout_seeds=[50], confirm_baselines=["oracle"]),
        "tune.confirm_baselines",
        "['oracle']",
    ),
]


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*a, **k):
        raise AssertionError("Ray was started for a config that should have been refused")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize(
    ("base", "command", "mutate", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_before_ray_with_its_field_path(
    tmp_path, capsys, no_ray, base, command, mutate, field, reason
):
    _write_data(tmp_path)
    raw = copy.deepcopy(DEMO) if base == "demo" else _hf(tmp_path)
    if command == "tune":
        raw.setdefault("tune", {}).setdefault("space", "lhas_default")
    mutate(raw, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main([command, str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert field in err and reason in err, err
    assert not out.exists()
    # validate says the same, without an output folder
    assert main(["validate", str(path)]) == 2
    assert field in capsys.readouterr().err


def test_the_valid_bases_pass_validate(tmp_path, capsys, no_ray):
    """The two bases the cases mutate are valid, so each case's error comes from its own mutation."""
    _write_data(tmp_path)
    for raw in (copy.deepcopy(DEMO), _hf(tmp_path)):
        raw.setdefault("tune", {})["space"] = "lhas_default"
        path = tmp_path / "ok.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_model_names_are_told_apart(tmp_path, monkeypatch):
    """Hub ids are left to from_pretrained (a cluster has network); paths must exist; packaged models need their
    package. 'Qwen/Qwen2.5-7B' holds a path separator and is still a Hub id (cluster_llm.yaml)."""
    from lhas_ray.config import preflight

    kinds = {
        "tiny-gpt2": "builtin",
        "smollm2-135m": "packaged",
        "Qwen/Qwen2.5-7B": "hub",
        "gpt2": "hub",
        str(tmp_path): "local",
        "./model": "local",
        "~/models/x": "local",
        "a/b/c": "local",
    }
    assert {name: preflight.model_kind(name) for name in kinds} == kinds
    assert preflight.model_problems("Qwen/Qwen2.5-7B") == []
    monkeypatch.setitem(preflight.PRETRAINED_PACKAGES, "smollm2-135m", ("no_such_module_xyz", "pip install xyz"))
    (problem,) = preflight.model_problems("smollm2-135m")
    assert "'no_such_module_xyz', which is not installed; run: pip install xyz" in problem
