"""Adam's moments at the end of a stage, saved beside its checkpoint: the preconditioner of LESS's gradient features.

LESS (Xia et al. 2024) scores a training example by the Adam update it would cause, Gamma = m' / (sqrt(v') + eps),
m' = b1 m + (1 - b1) g and v' = b2 v + (1 - b2) g^2, with m and v the optimizer state of the model being selected
for (``scoring.features.adam_precondition``). Only the parameters whose gradients are projected are kept.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load, save

from lhas_ray.scoring.features import AdamMoments
from lhas_ray.store import ResultStore

MOMENTS_FILE = "adam_moments.safetensors"


def gather_moments(engine, names: list[str]) -> AdamMoments:
    """Full (unpartitioned) exp_avg and exp_avg_sq of the named parameters; every rank must call it (ZeRO gathers)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    params = dict(engine.module.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no parameter(s) {missing} in the trained model")
    torch_opt = engine.optimizer if isinstance(engine.optimizer, torch.optim.Optimizer) else None
    m, v = {}, {}
    for n in names:
        p = params[n]
        got = [safe_get_full_optimizer_state(p, key) for key in ("exp_avg", "exp_avg_sq")]
        if got[0] is None:  # ZeRO stage 0: DeepSpeed keeps the torch optimizer as it is
            state = torch_opt.state.get(p, {}) if torch_opt is not None else {}
            got = [state.get(key) for key in ("exp_avg", "exp_avg_sq")]
        if got[0] is None:
            raise RuntimeError(f"the optimizer holds no Adam state for {n!r} (was it trained?)")
        m[n], v[n] = (t.detach().float().cpu().reshape(p.shape).clone() for t in got)
    group = _param_group(engine)
    return AdamMoments(m, v, betas=tuple(float(b) for b in group["betas"]), eps=float(group["eps"]))


def _param_group(engine) -> dict:
    opt = engine.optimizer
    while not hasattr(opt, "param_groups") and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt.param_groups[0]


def save_moments(store: ResultStore, checkpoint: str, moments: AdamMoments) -> str:
    """Write the moments into a checkpoint folder (atomically, like every store write)."""
    tensors = {f"exp_avg/{n}": t.contiguous() for n, t in moments.exp_avg.items()}
    tensors.update({f"exp_avg_sq/{n}": t.contiguous() for n, t in moments.exp_avg_sq.items()})
    meta = {"beta1": str(moments.betas[0]), "beta2": str(moments.betas[1]), "eps": str(moments.eps)}
    return store.write_bytes(f"{checkpoint}/{MOMENTS_FILE}", save(tensors, metadata=meta))


def load_moments(store: ResultStore, checkpoint: str) -> AdamMoments:
    """The moments saved with a checkpoint; a clear error where the stage that made it did not save them."""
    if not store.exists(checkpoint, MOMENTS_FILE):
        raise FileNotFoundError(
            f"{store.path(checkpoint)} has no {MOMENTS_FILE}: Adam preconditioning (less precondition: adam) needs "
            "the optimizer state of the training that made this checkpoint"
        )
    data = store.read_bytes(f"{checkpoint}/{MOMENTS_FILE}")
    tensors, meta = load(data), _metadata(data)
    m = {k.split("/", 1)[1]: t for k, t in tensors.items() if k.startswith("exp_avg/")}
    v = {k.split("/", 1)[1]: t for k, t in tensors.items() if k.startswith("exp_avg_sq/")}
    return AdamMoments(m, v, betas=(float(meta["beta1"]), float(meta["beta2"])), eps=float(meta["eps"]))


def _metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors blob (its JSON header)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
