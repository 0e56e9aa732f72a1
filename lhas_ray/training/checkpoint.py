"""HF-format checkpoints in the results store: saved atomically by rank 0, loaded as safetensors on every rank."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid

import torch

from lhas_ray.config import ModelConfig
from lhas_ray.model import load_pretrained, save_pretrained
from lhas_ray.store import ResultStore
from lhas_ray.training.dist import barrier, rank


def checkpoint_path(selector: str, seed: int, stage: int) -> str:
    """Store-relative folder of a trajectory's checkpoint after ``stage``; stage 0 is the seed's shared base."""
    if stage == 0:
        return f"checkpoints/_base/s{seed}"
    return f"checkpoints/{selector}/s{seed}/stage{stage}"


def _gathered(model: torch.nn.Module):
    """Full parameters for the duration of the block, also under ZeRO-3 partitioning."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def save_checkpoint(model: torch.nn.Module, tokenizer, store: ResultStore, relpath: str, keep_existing=False) -> None:
    """Save on rank 0 into a temporary folder, then move it into place, so a crash never leaves half a checkpoint.

    ``keep_existing``: a complete checkpoint already there wins and this one is dropped. Seeds' base checkpoints use
    it: trajectory groups running side by side may make the same base at once, and one may already be reading it.
    """
    with _gathered(model):
        if rank() == 0 and not (keep_existing and store.exists(relpath, "config.json")):
            final = store.local_path(relpath)
            if final is not None:
                tmp = f"{final}.tmp-{uuid.uuid4().hex}"
                save_pretrained(model, tokenizer, tmp)
                _move_into_place(tmp, final, keep_existing)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    save_pretrained(model, tokenizer, tmp)
                    store.upload_dir(tmp, relpath)
    barrier()


def _move_into_place(tmp: str, final: str, keep_existing: bool) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is replaced, or kept (and ``tmp`` dropped) if asked."""
    if os.path.exists(final) and not keep_existing:
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:  # a complete ``final`` is there (another group moved the same base into place first)
        if not (keep_existing and os.path.exists(os.path.join(final, "config.json"))):
            raise
        shutil.rmtree(tmp)


def load_checkpoint(store: ResultStore, relpath: str, model_cfg: ModelConfig, cache_dir: str):
    """(model, tokenizer) from a store checkpoint; remote stores are copied to ``cache_dir`` first."""
    local = store.local_path(relpath)
    if local is None:
        local = os.path.join(cache_dir, relpath.replace("/", "_"))
        if not os.path.isdir(local):
            store.download_dir(relpath, local)
    return load_pretrained(local, model_cfg)
