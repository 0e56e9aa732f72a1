"""Typed experiment configs: YAML in, dotted ``--set`` overrides, and one place where a bad value is caught.

Every field carries its documentation where it is declared (``sections.py``; Hugging Face dataset specs in
``sources.py``); ``experiment.py`` checks the sections
against each other; ``loading.py`` reads, overrides and writes configs. ``load_config`` fails before any Ray work,
with a message that names the field (``stages.1.budget``) and what is allowed.
"""

from lhas_ray.config.experiment import ExperimentConfig, heldout_problems, ood_leaks
from lhas_ray.config.loading import (
    PACKAGED_CONFIGS,
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    resolve_config_path,
)
from lhas_ray.config.sections import (
    DataConfig,
    EvaluationConfig,
    HFStageConfig,
    LoraConfig,
    MLflowConfig,
    ModelConfig,
    PoolConfig,
    ProbeConfig,
    RayConfig,
    ScoringConfig,
    SelectorConfig,
    StageConfig,
    TextSourceConfig,
    TrackingConfig,
    TrainingConfig,
    TuningConfig,
    WarmupConfig,
)
from lhas_ray.config.sources import HFColumns, HFSourceConfig

__all__ = [
    "PACKAGED_CONFIGS",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "HFColumns",
    "HFSourceConfig",
    "HFStageConfig",
    "LoraConfig",
    "MLflowConfig",
    "ModelConfig",
    "PoolConfig",
    "ProbeConfig",
    "RayConfig",
    "ScoringConfig",
    "SelectorConfig",
    "StageConfig",
    "TextSourceConfig",
    "TrackingConfig",
    "TrainingConfig",
    "TuningConfig",
    "WarmupConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "heldout_problems",
    "load_config",
    "ood_leaks",
    "resolve_config_path",
]
