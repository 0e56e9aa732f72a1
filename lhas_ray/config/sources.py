"""Where a stage's examples come from when they are a Hugging Face dataset: the ``datasets.load_dataset`` spec and
the column mapping, typed so that ``--set stages.0.hf.pool.split=...`` is checked like every other field.

``lhas_ray.tasks.hf`` reads a spec into examples; this module only says what a spec may hold.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOCAL_BUILDERS = ("json", "parquet", "csv", "text", "arrow")


class HFColumns(BaseModel):
    """Which dataset columns become the prompt and answer, or the text, and optionally the skill tag."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="Column with the conditioning text (no loss on it); omit for none.")
    answer: str | None = Field(None, description="Column with the text to learn (loss and accuracy on it).")
    text: str | None = Field(None, description="Column of plain text for language modelling (instead of answer).")
    skill: str | None = Field(
        None, description="Column with each row's capability tag; omit to use the source's skill."
    )

    @model_validator(mode="after")
    def _one_target(self) -> HFColumns:
        if (self.answer is None) == (self.text is None):
            raise ValueError("map exactly one of 'answer' (with an optional 'prompt') or 'text' to a column")
        if self.text is not None and self.prompt is not None:
            raise ValueError("'prompt' goes with 'answer'; a 'text' source has no prompt")
        return self

    def used(self) -> list[str]:
        """The dataset columns this mapping reads."""
        return [c for c in (self.prompt, self.answer, self.text, self.skill) if c is not None]


class HFSourceConfig(BaseModel):
    """A Hugging Face dataset (hub name or local files) read through ``datasets.load_dataset``, mapped to examples."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="Hub dataset id, or a builder for local files: json, parquet, csv, text, arrow.")
    name: str | None = Field(None, description="Dataset configuration name (load_dataset's second argument).")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Local files or globs for a builder path; a mapping names files per split."
    )
    split: str = Field("train", description="Split to read; slicing works ('train[:5000]').")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    columns: HFColumns = Field(..., description="Column mapping: {prompt, answer} or {text}, optional skill.")
    skill: str = Field("text", min_length=1, description="Skill tag of every row when columns.skill is not given.")
    max_chars: int | None = Field(None, ge=1, description="Cut answers/texts to this many characters; None keeps all.")
    label: str | None = Field(None, description="Name of this source in tags and errors; defaults to path.")
    cache_dir: str | None = Field(None, description="datasets cache folder; None uses HF_DATASETS_CACHE.")
    stream: bool = Field(
        False,
        description="Pools only, parquet files only: read the files batch by batch through Ray Data instead of "
        "loading them into the driver; the pool is every usable row of the files (pool.size does not apply).",
    )

    @model_validator(mode="after")
    def _local_files(self) -> HFSourceConfig:
        if self.path in LOCAL_BUILDERS and not self.data_files:
            raise ValueError(f"path {self.path!r} reads local files: give data_files (a path, glob or list)")
        if self.stream and (self.path != "parquet" or isinstance(self.data_files, dict)):
            raise ValueError(
                f"stream: true reads parquet files (path: parquet, data_files: a path, glob or list); {self.path!r} "
                "with these data_files cannot stream: convert the data to parquet, or set stream: false"
            )
        if self.stream and self.split != "train":
            raise ValueError(f"stream: true reads every row of the files; drop split {self.split!r} (slicing)")
        return self

    @property
    def source(self) -> str:
        return self.label or self.path
