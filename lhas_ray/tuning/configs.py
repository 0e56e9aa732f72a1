"""The configs a sweep derives from the user's: one trial's (the tuned lhas selector alone with the trial's
params) and the best config (the user's own, with the best params)."""

from __future__ import annotations

from lhas_ray.config import ConfigError, ExperimentConfig, SelectorConfig, config_from_dict


def tuned_selector(cfg: ExperimentConfig) -> SelectorConfig:
    """The lhas selector whose other params every trial keeps: tune.selector, else the first lhas, else defaults."""
    if cfg.tune.selector is not None:
        match = [s for s in cfg.selectors if s.key == cfg.tune.selector]
        if not match or match[0].name != "lhas":
            lhas = [s.key for s in cfg.selectors if s.name == "lhas"]
            raise ConfigError(
                f"tune.selector: {cfg.tune.selector!r} is not an lhas selector of this config (lhas selectors: {lhas})"
            )
        return match[0]
    return next((s for s in cfg.selectors if s.name == "lhas"), SelectorConfig(name="lhas"))


def trial_config(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """The experiment one trial runs: the tuned lhas selector alone, with the trial's params over the user's."""
    base = tuned_selector(cfg)
    raw = cfg.model_dump(mode="json")
    raw["selectors"] = [{"name": "lhas", "params": {**base.params, **params}, "label": base.label}]
    raw["output"] = None
    raw["tune"]["heldout_seeds"] = []  # a trial runs lhas alone; the sweep's confirmation is the sweep's business
    return config_from_dict(raw, source="trial config")


def best_config(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """The user's config with the tuned lhas selector's params set to ``params`` (added if the config had none)."""
    base = tuned_selector(cfg)
    raw = cfg.model_dump(mode="json")
    tuned = {"name": "lhas", "params": {**base.params, **params}, "label": base.label}
    keys = [s.key for s in cfg.selectors]
    if base.key in keys:
        raw["selectors"][keys.index(base.key)] = tuned
    else:
        raw["selectors"].append(tuned)
    raw["output"] = None
    return config_from_dict(raw, source="best config")
