"""Typed experiment configs: YAML in, dotted ``--set`` overrides, and one place where a bad value is caught.

Every field carries its documentation where it is declared. ``load_config`` fails before any Ray work, with a
message that names the field (``stages.1.budget``) and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    """Base for every config group: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Strict):
    """Low-rank adapters through peft; gradient features then cover the LoRA parameters, as LESS does."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(None, description="Module names to adapt; None lets peft choose.")


class ModelConfig(_Strict):
    """Which causal LM to fine-tune: the built-in tiny GPT-2 with a character tokenizer, or a HF model by path/id."""

    name: str = Field("tiny-gpt2", description="'tiny-gpt2' (built in), or a local path / hub id of a HF causal LM.")
    n_layer: int = Field(2, ge=1, le=48, description="tiny-gpt2 only: transformer blocks.")
    n_embd: int = Field(64, ge=8, description="tiny-gpt2 only: hidden size (a multiple of n_head).")
    n_head: int = Field(4, ge=1, description="tiny-gpt2 only: attention heads.")
    max_length: int = Field(64, ge=8, le=32768, description="Longest prompt+answer in tokens; longer ones are cut.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Parameter dtype for training.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.name == "tiny-gpt2" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class PoolConfig(_Strict):
    """How a stage's candidate pool is made from the built-in suite: shares of target/related/unrelated skills."""

    source: Literal["builtin"] = Field("builtin", description="Where pool examples come from.")
    size: int = Field(2000, ge=1, description="Candidate pool size N_t.")
    target_share: float = Field(0.4, ge=0, le=1, description="Share of the pool from the stage's target skills.")
    related_share: float = Field(0.3, ge=0, le=1, description="Share from skills related to the targets.")
    noise: float = Field(0.1, ge=0, lt=1, description="Share of examples whose answer is corrupted (label noise).")
    duplicates: float = Field(0.05, ge=0, lt=1, description="Share of examples that are near-duplicates of others.")

    @model_validator(mode="after")
    def _shares(self) -> PoolConfig:
        if self.target_share + self.related_share > 1 + 1e-9:
            raise ValueError(
                f"target_share + related_share = {self.target_share + self.related_share:g} exceeds 1; "
                "the rest of the pool is unrelated skills"
            )
        return self


class TextSourceConfig(_Strict):
    """A language-modelling stage over real text domains (lhas_ray/tasks/text.py): code, docs, bible, fortunes, jokes."""

    mix: dict[str, float] = Field(..., min_length=1, description="Pool share of each domain (shares sum to 1).")
    max_chars: int = Field(256, ge=16, description="Longest text chunk, in characters.")
    prompt_chars: int = Field(0, ge=0, description="Characters of each chunk given as an unscored prompt.")
    ood_domains: list[str] = Field(default_factory=list, description="Held-out text of these domains as OOD sets.")

    @model_validator(mode="after")
    def _shares(self) -> TextSourceConfig:
        total = sum(self.mix.values())
        if abs(total - 1) > 1e-6 or min(self.mix.values()) < 0:
            raise ValueError(f"mix shares must be >= 0 and sum to 1, got {self.mix} (sum {total:g})")
        if self.prompt_chars >= self.max_chars:
            raise ValueError(f"prompt_chars ({self.prompt_chars}) must be below max_chars ({self.max_chars})")
        return self


class HFStageConfig(_Strict):
    """A stage read from Hugging Face datasets (a hub name on a cluster, or local json/jsonl/parquet/csv files)."""

    pool: dict[str, Any] = Field(..., description="The pool's dataset spec (lhas_ray.tasks.hf.HFSourceConfig).")
    eval: dict[str, Any] = Field(..., description="The eval set's dataset spec; also the source of the probe sample.")
    ood: dict[str, dict[str, Any]] = Field(default_factory=dict, description="OOD sets by name: dataset specs.")
    general: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Extra sets of the 'general' eval set by name: dataset specs; up to evaluation.general_size rows "
        "of each, skill = the name (a name used by several stages needs the same spec).",
    )

    @field_validator("pool", "eval")
    @classmethod
    def _spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        from lhas_ray.tasks.hf import HFSourceConfig

        return HFSourceConfig.model_validate(spec).model_dump(exclude_none=True)

    @field_validator("ood", "general")
    @classmethod
    def _ood_specs(cls, specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from lhas_ray.tasks.hf import HFSourceConfig

        return {k: HFSourceConfig.model_validate(v).model_dump(exclude_none=True) for k, v in specs.items()}


class StageConfig(_Strict):
    """One fine-tuning stage: its target skills, its pool, the budget k_t and the sets it is judged on."""

    name: str = Field(..., min_length=1, description="Stage name, used in logs and the report.")
    source: Literal["builtin", "text", "hf"] = Field(
        "builtin", description="Where the stage's examples come from: the built-in suite, real text, or HF datasets."
    )
    targets: list[str] = Field(
        ..., min_length=1, description="Target skills (built-in), target domains (text), or skill labels (hf)."
    )
    text: TextSourceConfig | None = Field(None, description="source 'text': the domains and how they mix.")
    hf: HFStageConfig | None = Field(None, description="source 'hf': the dataset specs.")
    budget: int = Field(..., ge=1, description="k_t: how many pool examples the selector keeps.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="The candidate pool.")
    eval_size: int = Field(100, ge=1, description="Eval examples per target skill.")
    ood: list[Literal["length", "format"]] = Field(
        default_factory=lambda: ["length", "format"],
        description="OOD sets of this stage: longer inputs, unseen format.",
    )
    ood_size: int = Field(50, ge=1, description="Examples per target skill in each OOD set.")
    probe_size: int = Field(100, ge=1, description="Size of this stage's fixed probe sample (used after stage t-1).")

    @model_validator(mode="after")
    def _budget_fits(self) -> StageConfig:
        if self.budget > self.pool.size:
            raise ValueError(f"budget ({self.budget}) is larger than the pool (pool.size = {self.pool.size})")
        for kind in ("text", "hf"):
            if (self.source == kind) != (getattr(self, kind) is not None):
                raise ValueError(f"source {self.source!r}: give the '{kind}' block exactly when source is '{kind}'")
        return self


class DataConfig(_Strict):
    """Settings of the built-in controlled suite that hold across stages."""

    seed: int = Field(0, description="Data seed: same seed, same suite, byte for byte.")
    resample: Literal["fixed", "per_seed"] = Field(
        "fixed",
        description="'fixed': one draw of every set (pools, eval, OOD, probe, warm-up, proxy) for all trajectory "
        "seeds; 'per_seed': each trajectory seed draws its own sets (shared by every selector of that seed), so "
        "intervals over seeds include the data's variance.",
    )
    min_len: int = Field(2, ge=1, description="Shortest operand (characters/digits) in-distribution.")
    max_len: int = Field(6, ge=1, description="Longest operand in-distribution; OOD 'length' sets go beyond it.")

    @model_validator(mode="after")
    def _lengths(self) -> DataConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) is larger than max_len ({self.max_len})")
        return self


class SelectorConfig(_Strict):
    """A selector by registry name, with its parameters; ``label`` names it in results (defaults to name)."""

    name: str = Field(..., description="Registry name, see lhas_ray.selection.available_selectors().")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword parameters of the selector.")
    label: str | None = Field(None, description="Name in results; needed when one selector appears twice.")

    @property
    def key(self) -> str:
        return self.label or self.name


class WarmupConfig(_Strict):
    """The broad warm-up that makes the base checkpoint (stage 0): every skill a little, before any selection."""

    steps: int = Field(300, ge=0, description="Warm-up steps; 0 uses the model as loaded as the base.")
    size: int = Field(2000, ge=1, description="Warm-up examples, spread over every skill of the suite.")
    lr: float = Field(3e-3, gt=0, description="Warm-up learning rate.")


class TrainingConfig(_Strict):
    """How each stage trains (Ray Train + DeepSpeed)."""

    steps: int = Field(100, ge=1, description="Optimizer steps per stage.")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=1, description="Global batch size per step (split over workers).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3); configs in training/deepspeed/.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers per trajectory.")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per Train worker.")
    eval_every: int = Field(25, ge=1, description="Log loss and stage-eval accuracy every N steps.")
    max_failures: int = Field(
        1,
        ge=0,
        description="Times Ray Train restarts a run's workers after one dies; the rerun resumes at the last committed "
        "stage.",
    )
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="The warm-up that makes the base model.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainingConfig:
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_workers ({self.num_workers})")
        return self


class ProbeConfig(_Strict):
    """Future-adaptation probe: a short fine-tune from checkpoint t on stage t+1's fixed probe sample."""

    steps: int = Field(30, ge=1, description="Probe fine-tuning steps.")
    lr: float = Field(1e-3, gt=0, description="Probe learning rate.")
    eval_every: int = Field(5, ge=1, description="Evaluate the probe on stage t+1's eval set every N steps.")


class ScoringConfig(_Strict):
    """How candidate pools are scored with the current model: the Train workers score their Ray Data shards.

    (``lhas_ray.scoring.actor_pool`` scores with a separate Ray Data actor pool instead, for pools far larger than
    the training group scores quickly; the protocol does not use it yet.)
    """

    batch_size: int = Field(256, ge=1, description="Examples per scoring batch.")
    grad_dim: int = Field(64, ge=1, description="Dimension of the random projection of per-example gradients.")
    grad_params: list[str] = Field(
        default_factory=lambda: ["last_block", "lm_head"],
        description="Parameters whose gradients are projected: 'last_block', 'lm_head', 'all', or name substrings; "
        "with LoRA, adapters only ('all': every adapter, as LESS; 'last_block': the last block's, about 1 forward).",
    )


class EvaluationConfig(_Strict):
    """How checkpoints are evaluated and how trajectory metrics are read."""

    batch_size: int = Field(256, ge=1, description="Examples per evaluation batch.")
    accuracy: Literal["exact", "token"] = Field(
        "exact", description="'exact': the whole answer is argmax-correct (task stages); 'token': next-token accuracy."
    )
    lca_beta: int | None = Field(None, ge=1, description="LCA over the first beta probe steps; None = all.")
    probe_threshold: float = Field(0.5, ge=0, le=1, description="Probe accuracy for steps_to_threshold.")
    forgetting: Literal["since_trained", "any_earlier"] = Field(
        "since_trained",
        description="f_j^t = max over rows l of R[l, j] - R[t, j]: 'since_trained' takes l in [j, t-1] (after stage j "
        "was trained, the usual continual-learning reading); 'any_earlier' takes l in [1, t-1] (Chaudhry et al. "
        "2018 as written, so accuracy reached by transfer before training counts too).",
    )
    general_size: int = Field(
        50,
        ge=0,
        description="Examples per skill (built-in) or domain (text) of the 'general' eval set, evaluated after every "
        "stage over every skill of the suite, targeted or not (imbalance, untrained_retention); 0 turns it off.",
    )
    baselines: list[str] = Field(
        default_factory=lambda: ["random"],
        description="Selector keys every other selector is tested against (paired by seed); absent ones are skipped.",
    )
    myopia_metrics: list[str] | None = Field(
        None,
        description="Long-horizon metrics of the myopia family (None: all); fewer claims make each Holm step easier.",
    )

    @field_validator("myopia_metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        from lhas_ray.evaluation.metrics import COMPANIONS, LONG_HORIZON

        allowed = [m for m in LONG_HORIZON if m not in COMPANIONS]
        bad = [m for m in names or [] if m not in allowed]
        if bad:
            raise ValueError(f"unknown long-horizon metric(s) {bad}; allowed: {allowed}")
        return names


class RayConfig(_Strict):
    """Where Ray runs: an existing cluster (address) or a local instance sized to this machine."""

    address: str | None = Field(None, description="'auto' inside `ray job submit`; None starts a local instance.")
    num_cpus: int | None = Field(None, ge=1, description="Local instance only: CPUs to give Ray (None = all).")
    concurrent_trajectories: int = Field(
        1,
        ge=1,
        description="Trajectory groups run side by side; each group pays Train start-up once for all its stages.",
    )


class TuningConfig(_Strict):
    """``lhas-ray tune``: what a sweep over the LHAS weights maximises, how trials are scheduled; ignored by ``run``."""

    objective: str = Field(
        "acc - forgetting + mean_lca",
        description="Long-horizon score, maximised: + - * / () over trajectory metric names at the trial's latest "
        "stage, mean_<metric> (mean over stages) or first_<metric> (see lhas_ray/search_space.py).",
    )
    immediate: str = Field("first_immediate", description="Immediate score, same syntax; also maximised when multi.")
    multi_objective: bool = Field(
        False, description="True: maximise (immediate, objective) together, keep the Pareto set; False: objective only."
    )
    selector: str | None = Field(
        None, description="Key of the lhas selector whose other params trials keep (None: the first lhas, if any)."
    )
    space: str | None = Field(None, description="Search-space YAML (search_spaces/NAME.yaml); --space wins.")
    trials: int = Field(20, ge=1, description="Trials to run; --trials wins.")
    seed: int = Field(0, description="Seed of Optuna's TPE sampler (same seed and results: same suggestions).")
    startup_trials: int = Field(5, ge=1, description="Random trials before TPE starts modelling the objective.")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="'asha': stop poor trials early, judged after each stage; 'fifo': run every trial through."
    )
    grace_period: int = Field(
        1,
        ge=1,
        description="ASHA: stages every trial completes before it can be stopped (2 waits until forgetting exists: "
        "fewer steps saved, less trust in the first stage's immediate gain).",
    )
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep about 1/reduction_factor trials per rung.")
    max_concurrent: int | None = Field(
        None, ge=1, description="Trials at once; None: as many Train runs as the cluster's CPUs/GPUs fit at most."
    )
    max_failures: int = Field(
        1, ge=0, description="Retries of a failed trial (a Train worker died...); it resumes from its last stage."
    )
    report_top: int = Field(8, ge=1, description="The sweep's report compares the best N completed trials.")
    heldout_seeds: list[int] = Field(
        default_factory=list,
        description="Seeds the sweep never sees: after it, `lhas-ray confirm` reruns the best weights beside the "
        "baselines on them, each seed with a fresh data draw (empty: no confirmation).",
    )
    development_seeds: list[int] = Field(
        default_factory=list,
        description="Set by `lhas-ray confirm` in confirm_config.yaml: the seeds the weights were tuned on, none of "
        "which this run may use (its report then calls its numbers held-out).",
    )
    confirm_baselines: list[str] = Field(
        default_factory=lambda: ["random", "facility_location"],
        description="Selector keys of this config the tuned LHAS is confirmed against, beside the best selector by "
        "the immediate score in the sweep's own baseline runs on the development seeds.",
    )

    @field_validator("objective", "immediate")
    @classmethod
    def _formula(cls, text: str) -> str:
        from lhas_ray.evaluation.formulas import parse_formula

        return parse_formula(text).text


class ExperimentConfig(_Strict):
    """A whole experiment: the model, the stages, the selectors compared, the seeds, and where results go."""

    name: str = Field("experiment", description="Experiment name, shown in the report.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The causal LM.")
    data: DataConfig = Field(default_factory=DataConfig, description="The built-in suite.")
    stages: list[StageConfig] = Field(..., min_length=1, description="The stages, in order (at least one).")
    selectors: list[SelectorConfig] = Field(..., min_length=1, description="Selectors to compare.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Trajectory seeds.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Stage training.")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="Future-adaptation probe.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Pool scoring.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster.")
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
        if problems := heldout_problems(self):
            raise ValueError("\n    ".join(problems))
        if leaks := ood_leaks(self.stages):
            raise ValueError("\n    ".join(leaks))
        from lhas_ray.tasks.builtin import capacity_problems

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


def _source_identity(spec: dict[str, Any]) -> tuple:
    """Which rows a dataset spec reads, up to slicing: path, configuration, files and the split's base name."""
    files = spec.get("data_files")
    return (spec.get("path"), spec.get("name"), repr(files), str(spec.get("split", "train")).split("[")[0])


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
                        f"({spec.get('path')}, split {spec.get('split', 'train')}), the eval and probe set of stage "
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


# --- loading ----------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config that cannot be used, with every problem on its own line, each naming its field."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented fields in lhas_ray/config.py)"
        lines.append(
            f"  {loc}: {msg}"
            + (
                f" (got {e['input']!r})"
                if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e["input"], dict)
                else ""
            )
        )
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """Parse an override's value as YAML (so 1e-3, true, [a, b] work), with a safe loader."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides; list items by index (``stages.0.budget=50``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        path, value = item.split("=", 1)
        parts = path.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, path)
            node[idx] = _parse_value(value)
        else:
            node[last] = _parse_value(value)
    return raw


def _index(node: list, part: str, path: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {path!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _child(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {path!r}: cannot descend into a {type(node).__name__}")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config path as given, or a packaged config by bare name (``demo`` -> lhas_ray/configs/demo.yaml)."""
    p = Path(path)
    if p.exists():
        return p
    packaged = PACKAGED_CONFIGS / (p.name if p.suffix else f"{p.name}.yaml")
    if packaged.exists() and p.parent == Path("."):
        return packaged
    raise ConfigError(
        f"config file {str(path)!r} not found (packaged configs: {sorted(c.stem for c in PACKAGED_CONFIGS.glob('*.yaml'))})"
    )


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (safe loader), apply overrides, validate; raise ConfigError naming each bad field."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p} must be a mapping of fields, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(p))


def config_from_dict(raw: dict, source: str = "<dict>") -> ExperimentConfig:
    """Validate a config mapping; raise ConfigError naming each bad field."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that ``load_config`` accepts again."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
