"""DeepSpeed engines for a stage: the ZeRO JSON of the configured stage, filled with batch sizes, and a torch optimizer.

The optimizer is a plain ``torch.optim.AdamW`` handed to ``deepspeed.initialize`` (no "optimizer" block in the JSON),
so no DeepSpeed C++ optimizer is compiled. On CPU the shared-memory all-reduce op is switched off before the comm
backend starts, so no op is compiled at run time either (see ``disable_cpu_shm_op``).
"""

from __future__ import annotations

import copy
import json
from importlib import resources

import torch

from lhas_ray.config import ModelConfig, TrainingConfig


def disable_cpu_shm_op() -> None:
    """Stop DeepSpeed building its CPU shared-memory comm op (``deepspeed/comm/torch.py:build_shm_op``).

    Building it costs about a minute of C++ compilation on every fresh machine; gloo all-reduce is what it would
    speed up, and at our sizes the difference is noise. ``build_shm_op`` returns None when the op is marked
    incompatible in ``deepspeed.ops.__compatible_ops__``, a module-level dict that DeepSpeed caches.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(train: TrainingConfig, model: ModelConfig, world_size: int) -> dict:
    """The packaged ``training/deepspeed/zero{N}.json`` for the configured ZeRO stage, with batch sizes filled in."""
    text = resources.files("lhas_ray.training").joinpath(f"deepspeed/zero{train.zero_stage}.json").read_text()
    cfg = json.loads(text)
    micro = train.micro_batch(world_size)
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["train_batch_size"] = micro * world_size * cfg.get("gradient_accumulation_steps", 1)
    cfg["gradient_clipping"] = train.grad_clip
    if model.dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif model.dtype == "float16":
        cfg["fp16"] = {"enabled": True}
    return cfg


def lr_lambda(total_steps: int, warmup_frac: float = 0.05):
    """Linear warm-up then linear decay to 10% of the peak: the usual fine-tuning schedule."""
    warm = max(int(total_steps * warmup_frac), 1)

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.1, 1.0 - 0.9 * (step - warm) / max(total_steps - warm, 1))

    return fn


def make_engine(model: torch.nn.Module, ds_config: dict, lr: float, weight_decay: float, steps: int):
    """Wrap a model in a DeepSpeed engine with a fresh AdamW and schedule (one engine per stage or probe)."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=copy.deepcopy(ds_config)
    )
    return engine
