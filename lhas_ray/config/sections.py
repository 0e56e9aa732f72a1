"""The sections of an experiment config (model, data, stages, selectors, training, probe, scoring, evaluation, ray,
tune), each a strict pydantic model whose fields carry their documentation where they are declared."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lhas_ray.config.lmeval import LMEvalConfig
from lhas_ray.config.sources import HFSourceConfig


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

    pool: HFSourceConfig = Field(..., description="The pool's dataset spec.")
    eval: HFSourceConfig = Field(..., description="The eval set's dataset spec; also the source of the probe sample.")
    ood: dict[str, HFSourceConfig] = Field(default_factory=dict, description="OOD sets by name: dataset specs.")
    general: dict[str, HFSourceConfig] = Field(
        default_factory=dict,
        description="Extra sets of the 'general' eval set by name: dataset specs; up to evaluation.general_size rows "
        "of each, skill = the name (a name used by several stages needs the same spec).",
    )


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
        streamed = self.hf is not None and self.hf.pool.stream
        # a config written back (model_dump) names the default size, so only another value is a conflict
        if streamed and self.pool.size != PoolConfig.model_fields["size"].default:
            raise ValueError(
                "pool.size samples a pool in memory; a streamed pool (hf.pool.stream: true) is every usable row of "
                "its files: drop pool.size, or set stream: false"
            )
        if self.hf is not None:
            sets = {"eval": self.hf.eval, **{f"ood.{k}": v for k, v in self.hf.ood.items()}}
            sets.update({f"general.{k}": v for k, v in self.hf.general.items()})
            if bad := [name for name, spec in sets.items() if spec.stream]:
                raise ValueError(f"hf.{bad[0]}.stream: only a pool streams; held-out sets are small and load whole")
        if not streamed and self.budget > self.pool.size:
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
    zero_stage: int = Field(
        0,
        ge=0,
        le=3,
        description="DeepSpeed ZeRO stage (0-3; configs in training/deepspeed/). 0, replicated AdamW with all-reduced "
        "gradients, is the fastest where the model and its optimizer state fit each worker; 2 or 3 partition them "
        "when memory needs it.",
    )
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
    collective_timeout_s: int = Field(
        1800,
        ge=60,
        description="Seconds a rank waits in a collective (gloo/NCCL; Ray Train's TorchConfig.timeout_s): the other "
        "ranks wait this long while rank 0 selects, or scores with scoring.mode actor_pool; raise it for huge pools.",
    )
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="The warm-up that makes the base model.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainingConfig:
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_workers ({self.num_workers})")
        return self

    def micro_batch(self, world_size: int) -> int:
        """Examples each of ``world_size`` workers takes from every global batch (DeepSpeed's micro batch)."""
        if world_size < 1 or self.batch_size % world_size:
            raise ValueError(f"batch_size ({self.batch_size}) does not split over {world_size} workers")
        return self.batch_size // world_size


class ProbeConfig(_Strict):
    """Future-adaptation probe: a short fine-tune from checkpoint t on stage t+1's fixed probe sample."""

    steps: int = Field(30, ge=1, description="Probe fine-tuning steps.")
    lr: float = Field(1e-3, gt=0, description="Probe learning rate.")
    eval_every: int = Field(5, ge=1, description="Evaluate the probe on stage t+1's eval set every N steps.")


class ScoringConfig(_Strict):
    """How candidate pools are scored with the current model: by the Train workers, each its Ray Data shard
    ('workers'), or by a Ray Data actor pool over the cluster's free CPUs/GPUs ('actor_pool'), for pools far larger
    than the training group scores quickly."""

    mode: Literal["workers", "actor_pool"] = Field(
        "workers",
        description="'workers': the training workers score their shards (no extra start-up); 'actor_pool': Ray Data "
        "map_batches actors, each loading the current checkpoint, over the CPUs/GPUs training leaves free.",
    )
    actors: int | None = Field(
        None, ge=1, description="actor_pool: most scoring actors (None: as many as the free CPUs or GPUs hold)."
    )
    cpus_per_actor: float = Field(1, gt=0, description="actor_pool: CPUs each scoring actor reserves.")
    gpus_per_actor: float = Field(0, ge=0, description="actor_pool: GPUs each scoring actor reserves (0: CPU only).")

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
    lm_eval: LMEvalConfig | None = Field(
        None,
        description="General ability with lm-evaluation-harness after every stage (eval sets 'lm_eval/<task>'; "
        "trajectory metrics lm_eval_acc, lm_eval_delta); None: off.",
    )

    @field_validator("myopia_metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        from lhas_ray.evaluation.definitions import COMPANIONS, LONG_HORIZON

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


class MLflowConfig(_Strict):
    """Log to MLflow (extra ``mlflow``): one MLflow run per trajectory of a run, one per trial of a sweep."""

    tracking_uri: str | None = Field(
        None, description="Where runs go: file:///path, http://server:5000, databricks...; None: MLFLOW_TRACKING_URI."
    )
    experiment: str | None = Field(None, description="MLflow experiment name; None: the config's name.")


class WandbConfig(_Strict):
    """Log to Weights & Biases (extra ``wandb``): one W&B run per trajectory of a run, one per trial of a sweep."""

    project: str = Field("lhas_ray", description="W&B project the runs go to.")
    entity: str | None = Field(None, description="W&B team or user; None: the default entity of the API key.")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="offline: run folders on disk only, no network (`wandb sync` uploads them later); online: the "
        "W&B server (needs WANDB_API_KEY or `wandb login`); disabled: log nothing.",
    )
    dir: str | None = Field(
        None,
        description="Where wandb writes (<dir>/wandb/); None: WANDB_DIR, else the working directory (a sweep's "
        "trial: its Tune trial folder).",
    )
    group: str | None = Field(
        None, description="W&B group; None: the config's name for a run's trajectories, '<name>-sweep' for trials."
    )
    tags: list[str] = Field(default_factory=list, description="Tags put on every W&B run.")


class TrackingConfig(_Strict):
    """Experiment trackers, off by default; not part of a run's identity (adding one to a finished run resumes it)."""

    mlflow: MLflowConfig | None = Field(None, description="MLflow tracking; None: off.")
    wandb: WandbConfig | None = Field(None, description="Weights & Biases tracking; None: off.")


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
    immediate_tolerance: float | None = Field(
        None,
        ge=0,
        description="Keep the immediate score within this much of the best myopic selector's: the sweep first runs "
        "the config's baselines on the development seeds, and the best trial is the best objective among trials whose "
        "immediate score is at least (best myopic's) - tolerance; ASHA and TPE see the objective with a penalty for "
        "any shortfall (None: objective alone).",
    )
    immediate_floor: float | None = Field(
        None,
        description="An absolute floor on the immediate score with the same effect; `lhas-ray tune` sets it from "
        "immediate_tolerance and the baseline runs (recorded in best_config.yaml).",
    )
    heldout_seeds: list[Annotated[int, Field(ge=0)]] = Field(
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
