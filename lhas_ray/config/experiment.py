"""The whole experiment config and the checks across its sections: known selectors, skills and domains, distinct
names, prompt spaces large enough, held-out seeds apart from the tuned ones, OOD sets apart from the eval sets."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, field_validator, model_validator

from lhas_ray.config.sections import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    ProbeConfig,
    RayConfig,
    ScoringConfig,
    SelectorConfig,
    StageConfig,
    TrackingConfig,
    TrainingConfig,
    TuningConfig,
    _Strict,
)
from lhas_ray.config.sources import HFSourceConfig


class ExperimentConfig(_Strict):
    """A whole experiment: the model, the stages, the selectors compared, the seeds, and where results go."""

    name: str = Field("experiment", description="Experiment name, shown in the report.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The causal LM.")
    data: DataConfig = Field(default_factory=DataConfig, description="The built-in suite.")
    stages: list[StageConfig] = Field(..., min_length=1, description="The stages, in order (at least one).")
    selectors: list[SelectorConfig] = Field(..., min_length=1, description="Selectors to compare.")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, description="Trajectory seeds (distinct, >= 0)."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Stage training.")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="Future-adaptation probe.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Pool scoring.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment trackers (off).")
    tune: TuningConfig = Field(default_factory=TuningConfig, description="`lhas-ray tune` settings (run ignores).")
    output: str | None = Field(None, description="Results folder or URI; the CLI's --output wins.")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        from lhas_ray.selection import available_selectors
        from lhas_ray.tasks.builtin import SKILLS

        known = available_selectors()
        for i, sel in enumerate(self.selectors):
            if sel.name not in known:
                raise ValueError(f"selectors.{i}.name: unknown selector {sel.name!r}; available: {sorted(known)}")
        if problems := selector_param_problems(self.selectors):
            raise ValueError("\n    ".join(problems))
        keys = [s.key for s in self.selectors]
        if len(set(keys)) != len(keys):
            raise ValueError(f"selectors: duplicate names {keys}; give repeated selectors distinct 'label's")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: duplicate stage names {names}")
        for i, stage in enumerate(self.stages):
            if stage.source == "builtin":
                unknown = [t for t in stage.targets if t not in SKILLS]
                if unknown:
                    raise ValueError(
                        f"stages.{i}.targets: unknown skill(s) {unknown}; built-in skills: {sorted(SKILLS)}"
                    )
            elif stage.source == "text":
                from lhas_ray.tasks.text import DOMAINS

                named = [*stage.targets, *stage.text.mix, *stage.text.ood_domains]
                unknown = sorted({d for d in named if d.partition("/")[0] not in DOMAINS})
                if unknown:
                    raise ValueError(
                        f"stages.{i}: unknown text domain(s) {unknown}; domains: {sorted(DOMAINS)} (or fortunes/<category>)"
                    )
        for i, sel in enumerate(self.selectors):
            if sel.name == "less" and sel.params.get("precondition") == "adam" and self.training.warmup.steps == 0:
                raise ValueError(
                    f"selectors.{i}.params.precondition: 'adam' preconditions stage 1's gradients with the warm-up's "
                    "optimizer state; set training.warmup.steps > 0 (or precondition: none)"
                )
        if problems := heldout_problems(self) + constraint_problems(self):
            raise ValueError("\n    ".join(problems))
        if leaks := ood_leaks(self.stages):
            raise ValueError("\n    ".join(leaks))
        from lhas_ray.tasks.capacity import capacity_problems

        if problems := capacity_problems(self):
            raise ValueError("\n    ".join(problems))
        return self

    def selector(self, key: str) -> SelectorConfig:
        return next(s for s in self.selectors if s.key == key)

    def data_seed(self, seed: int) -> int:
        """The data seed trajectory ``seed`` draws its sets with: ``data.seed`` itself, or one of its own per seed."""
        if self.data.resample == "fixed":
            return self.data.seed
        return int(np.random.SeedSequence([self.data.seed, seed, 7919]).generate_state(1, np.uint32)[0])


def heldout_problems(cfg: ExperimentConfig) -> list[str]:
    """What keeps ``tune.heldout_seeds`` from being a held-out confirmation: a seed the sweep also tunes on, a repeat,
    or a baseline that is not one of this config's non-lhas selectors."""
    problems = []
    if shared := sorted(set(cfg.tune.development_seeds) & set(cfg.seeds)):
        problems.append(
            f"seeds: {shared} are tune.development_seeds, the seeds the weights were tuned on; a held-out run must "
            "not use them"
        )
    heldout = cfg.tune.heldout_seeds
    if not heldout:
        return problems
    if len(set(heldout)) != len(heldout):
        problems.append(f"tune.heldout_seeds: seeds must be distinct, got {heldout}")
    if shared := sorted(set(heldout) & set(cfg.seeds)):
        problems.append(
            f"tune.heldout_seeds: {shared} are also development seeds (seeds: {cfg.seeds}); a held-out seed must "
            "never reach the sweep"
        )
    others = [s.key for s in cfg.selectors if s.name != "lhas"]
    if bad := [b for b in cfg.tune.confirm_baselines if b not in others]:
        problems.append(
            f"tune.confirm_baselines: {bad} are not non-lhas selectors of this config (they are: {others}); the "
            "sweep's baseline runs use the config's own selectors"
        )
    if not others:
        problems.append(
            "tune.heldout_seeds: the config has no selector but lhas, so there is nothing to confirm against"
        )
    return problems


def constraint_problems(cfg: ExperimentConfig) -> list[str]:
    """What keeps ``tune.immediate_tolerance``/``immediate_floor`` from meaning anything: a multi-objective sweep
    (its Pareto set already keeps every immediate level), or no baseline to measure the tolerance from."""
    tune = cfg.tune
    if tune.immediate_tolerance is None and tune.immediate_floor is None:
        return []
    problems = []
    if tune.multi_objective:
        problems.append(
            "tune.multi_objective: a multi-objective sweep keeps the Pareto set of immediate and objective; drop "
            "tune.immediate_tolerance/immediate_floor, or set multi_objective: false"
        )
    myopic = [s.key for s in cfg.selectors if s.name not in ("lhas", "random")]
    if tune.immediate_tolerance is not None and tune.immediate_floor is None and not myopic:
        problems.append(
            "tune.immediate_tolerance: the config has no selector but lhas and random, so there is no best myopic "
            "selector to measure the tolerance from; add baselines (rds, loss_low, ...) or set tune.immediate_floor"
        )
    return problems


def _source_identity(spec: HFSourceConfig) -> tuple:
    """Which rows a dataset spec reads, up to slicing: path, configuration, files and the split's base name."""
    return (spec.path, spec.name, repr(spec.data_files), spec.split.split("[")[0])


def ood_leaks(stages: list[StageConfig]) -> list[str]:
    """OOD sets drawn from the same source and split as a stage's eval (and probe) set: each would score the model on
    rows it is also judged on in distribution, so such a config is refused, naming both."""
    problems = []
    evals = {}
    for j, st in enumerate(stages):
        if st.source == "hf":
            evals[_source_identity(st.hf.eval)] = j
    for i, st in enumerate(stages):
        if st.source == "hf":
            for name, spec in st.hf.ood.items():
                j = evals.get(_source_identity(spec))
                if j is not None:
                    problems.append(
                        f"stages.{i}.hf.ood.{name}: reads the same source and split as stages.{j}.hf.eval "
                        f"({spec.path}, split {spec.split}), the eval and probe set of stage "
                        f"{stages[j].name!r}; use a source no stage evaluates on"
                    )
        elif st.source == "text":
            for dom in st.text.ood_domains:
                for j, other in enumerate(stages):
                    if other.source == "text" and dom in other.targets:
                        problems.append(
                            f"stages.{i}.text.ood_domains: {dom!r} is the eval domain of stages.{j} "
                            f"({other.name!r}): both are drawn from its held-out documents; use a domain no stage "
                            "evaluates on"
                        )
    return problems


def selector_param_problems(selectors: list[SelectorConfig]) -> list[str]:
    """Each selector's parameters checked against its declared specs (name, type, range, choice), by field path."""
    from lhas_ray.selection import get_selector
    from lhas_ray.selection.base import ParamError

    problems = []
    for i, sel in enumerate(selectors):
        try:
            get_selector(sel.name, **sel.params)
        except ParamError as e:
            problems.append(f"selectors.{i}.params" + (f".{e.param}" if e.param else "") + f": {e.detail}")
    return problems
