"""Config errors name the field and what is allowed, before any Ray work."""

from __future__ import annotations

import pytest
import yaml

from lhas_ray.config import ConfigError, TrainingConfig, config_from_dict, dump_config, load_config


def _demo() -> dict:
    from lhas_ray.config import PACKAGED_CONFIGS

    return yaml.safe_load((PACKAGED_CONFIGS / "demo.yaml").read_text())


def test_packaged_demo_is_valid():
    cfg = load_config("demo")
    assert len(cfg.stages) >= 3 and len(cfg.selectors) >= 2


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("demo", ["training.lr=0.01"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_dotted_overrides_reach_nested_fields_and_list_items():
    cfg = load_config("demo", ["training.lr=1e-3", "stages.1.budget=50", "seeds=[1, 2]", "training.use_gpu=true"])
    assert cfg.training.lr == 1e-3
    assert cfg.stages[1].budget == 50
    assert cfg.seeds == [1, 2]
    assert cfg.training.use_gpu is True


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        (["stages.0.budget=5000"], "stages.0", "larger than the pool"),
        (["training.lr=-0.1"], "training.lr", "greater than 0"),
        (["training.zero_stage=4"], "training.zero_stage", "less than or equal to 3"),
        (["training.lrr=0.1"], "training.lrr", "unknown key"),
        (["stages=[]"], "stages", "at least 1"),
        (["stages.0.targets=[flying]"], "stages.0.targets", "built-in skills"),
        (["stages.0.pool.target_share=0.9"], "stages.0.pool", "exceeds 1"),
        (["seeds=[1, 1]"], "seeds", "distinct"),
        (["training.num_workers=2", "training.batch_size=33"], "training", "multiple of num_workers"),
    ],
)
def test_invalid_values_name_the_field(overrides, field, allowed):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides)
    assert field in str(err.value)
    assert allowed in str(err.value)


def test_unknown_selector_lists_the_available_ones():
    raw = _demo()
    raw["selectors"] = [{"name": "oracle"}]
    with pytest.raises(ConfigError, match=r"selectors\.0\.name.*unknown selector 'oracle'.*random"):
        config_from_dict(raw)


def test_missing_file_and_bad_override_are_clear():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/config.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("demo", ["training.lr"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config("demo", ["stages.9.budget=3"])


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def _hf(path: str, split: str, **extra) -> dict:
    return {"path": path, "split": split, "columns": {"prompt": "q", "answer": "a"}, **extra}


def _hf_stages(ood_of_first: dict) -> list[dict]:
    block = {"budget": 10, "pool": {"size": 100}, "eval_size": 10, "ood_size": 5, "probe_size": 5}
    return [
        {
            "name": "math",
            "source": "hf",
            "targets": ["math"],
            "hf": {"pool": _hf("org/math", "train"), "eval": _hf("org/math", "test"), "ood": {"code": ood_of_first}},
            **block,
        },
        {
            "name": "code",
            "source": "hf",
            "targets": ["code"],
            "hf": {"pool": _hf("org/code", "train"), "eval": _hf("org/code", "test[:100]")},
            **block,
        },
    ]


def test_an_ood_set_that_is_another_stages_eval_source_is_refused():
    """Stage 1's OOD set reads stage 2's eval split (sliced differently): refused, naming both, before any loading."""
    raw = {"stages": _hf_stages(_hf("org/code", "test")), "selectors": [{"name": "random"}]}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    msg = str(err.value)
    assert "stages.0.hf.ood.code" in msg and "stages.1.hf.eval" in msg and "'code'" in msg
    # another split of that source is fine, and so is another configuration of it
    config_from_dict({**raw, "stages": _hf_stages(_hf("org/code", "validation"))})
    config_from_dict({**raw, "stages": _hf_stages(_hf("org/code", "test", name="hard"))})


def test_a_text_ood_domain_that_a_stage_evaluates_on_is_refused():
    raw = load_config("real_text").model_dump(mode="json")
    raw["stages"][2]["text"]["ood_domains"] = ["code"]  # stage 1's eval domain
    with pytest.raises(ConfigError, match=r"stages.2.text.ood_domains: 'code' is the eval domain of stages.0"):
        config_from_dict(raw)


def test_adam_preconditioning_without_a_warm_up_is_refused():
    """less precondition: adam at stage 1 needs the warm-up's optimizer state: no warm-up steps, no state."""
    ok = load_config("demo", ["selectors.5.params={precondition: adam}"])
    assert ok.selectors[5].name == "less"
    with pytest.raises(ConfigError, match=r"selectors.5.params.precondition: 'adam' .* training.warmup.steps > 0"):
        load_config("demo", ["selectors.5.params={precondition: adam}", "training.warmup.steps=0"])


def test_a_typo_inside_an_hf_dataset_spec_names_its_dotted_path():
    """The HF specs are typed config models: a wrong key or value deep in a stage's source is refused like any other
    field, with the path a `--set` user would type."""
    raw = {"stages": _hf_stages(_hf("org/code", "validation")), "selectors": [{"name": "random"}]}
    raw["stages"][0]["hf"]["pool"]["splt"] = "train"
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert "stages.0.hf.pool.splt" in str(err.value)
    raw["stages"][0]["hf"]["pool"].pop("splt")
    raw["stages"][1]["hf"]["eval"]["columns"] = {"prompt": "q"}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert "stages.1.hf.eval.columns" in str(err.value) and "exactly one of 'answer'" in str(err.value)


def test_micro_batch_is_the_global_batch_split_over_the_workers():
    train = TrainingConfig(batch_size=32, num_workers=2)
    assert [train.micro_batch(w) for w in (1, 2, 4, 8)] == [32, 16, 8, 4]
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        train.micro_batch(3)
