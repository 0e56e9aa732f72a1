"""``evaluation.lm_eval``: which lm-evaluation-harness tasks judge general ability after every stage, and how.

``lhas_ray.evaluation.lm_eval`` runs them; ``config/preflight.py`` checks the package, include_path and task names
before Ray starts; this module only says what the section may hold.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LMEvalConfig(BaseModel):
    """General ability with lm-evaluation-harness (extra ``lmeval``): named lm-eval tasks run on the base model and
    every stage's checkpoint; each top-level task or group becomes the eval set ``lm_eval/<name>``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    tasks: list[str] = Field(
        ..., min_length=1, description="lm-eval task, group or tag names (as `lm-eval ls tasks` lists them)."
    )
    include_path: str | None = Field(
        None,
        description="A folder of your own task YAMLs (lm-eval's `--include_path`; an absolute path the Train workers "
        "can read); its tasks win over lm-eval's own of the same name.",
    )
    include_defaults: bool = Field(
        True,
        description="Also index lm-eval's own tasks (thousands of YAMLs: seconds to half a minute per process); "
        "false when every task is in include_path.",
    )
    limit: int | None = Field(None, ge=1, description="Examples per task (the first N); None = every example.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt; None = the task's own.")
    batch_size: int = Field(32, ge=1, description="Requests (context + continuation) per forward batch.")
    max_length: int | None = Field(
        None,
        ge=2,
        description="Tokens of context + continuation per request, contexts cut from the left; None = model.max_length.",
    )
    max_gen_toks: int = Field(
        64, ge=1, description="Greedy tokens generated for generate_until tasks that do not set max_gen_toks."
    )
