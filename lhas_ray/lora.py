"""Low-rank adapters (peft) on any HF causal LM: only the adapters train, and gradient features cover them (LESS).

Checkpoints are saved **merged** by default (``save_merged``): the adapters are folded into the base weights and the
folder is an ordinary HF checkpoint, so every consumer (scoring, evaluation, the next stage, ``from_pretrained``)
reads it without knowing LoRA was used, and each stage trains fresh adapters on top of the previous stage's merged
weights. The cost is a full-size checkpoint per stage. ``save_adapter`` / ``load_adapter`` keep only the adapter
(a few MB) for when storage matters; such a folder is only meaningful on top of the exact base it was trained from.
"""

from __future__ import annotations

import copy
import os

import torch

PEFT_INSTALL = "pip install peft"


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ModuleNotFoundError(f"LoRA needs the 'peft' package; install it with: {PEFT_INSTALL}") from e
    return peft


def default_target_modules(model: torch.nn.Module) -> list[str] | str:
    """peft's usual attention projections for the model's type (q/v for Llama, c_attn for GPT-2), else every Linear."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return list(MAPPING[model_type]) if model_type in MAPPING else "all-linear"


def apply_lora(
    model: torch.nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> torch.nn.Module:
    """Wrap a causal LM in rank-``r`` adapters (scale alpha / r); every other parameter is frozen.

    Takes the fields of ``config.LoraConfig`` directly: ``apply_lora(model, **cfg.model.lora.model_dump())``.
    """
    peft = _peft()
    targets = target_modules or default_target_modules(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 stores its projections as Conv1D (in x out)
        bias="none",
        task_type=peft.TaskType.CAUSAL_LM,
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:
        raise ValueError(f"LoRA target_modules {targets!r} do not fit {type(model).__name__}: {e}") from None


def is_lora(model: torch.nn.Module) -> bool:
    """Whether the model (or the module inside a DeepSpeed engine) carries peft adapters."""
    model = getattr(model, "module", model)
    return any("lora_" in name for name, _ in model.named_parameters())


def lora_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable adapter parameters: what LESS-style gradient features project."""
    return [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """A plain HF model with the adapters folded into its weights; the adapted model passed in is left as it was."""
    return copy.deepcopy(model).merge_and_unload()


def save_merged(model: torch.nn.Module, tokenizer, path: str | os.PathLike) -> str:
    """Save an adapted model as an ordinary HF checkpoint (merged weights, safetensors) plus its tokenizer."""
    merged = merge_lora(model) if is_lora(model) else model
    merged.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def save_adapter(model: torch.nn.Module, path: str | os.PathLike) -> str:
    """Save only the adapter weights and their config (adapter_config.json, adapter_model.safetensors)."""
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def load_adapter(base: torch.nn.Module, path: str | os.PathLike, trainable: bool = False) -> torch.nn.Module:
    """Put a saved adapter back on the base model it was trained from."""
    peft = _peft()
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise FileNotFoundError(f"{str(path)!r} holds no adapter (adapter_config.json is missing)")
    return peft.PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
