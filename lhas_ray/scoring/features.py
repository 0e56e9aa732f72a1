"""Per-example features from one batch: answer loss, exact match, EL2N, pooled embedding, projected gradients.

All batched torch: one forward pass gives loss, exact match, EL2N and the embedding for the whole batch; per-example
gradients come from one batched backward (``per_example``: Linear, Conv1D, LoRA, embedding and LayerNorm
parameters), else from ``torch.func.vmap(grad(...))``; never from a Python loop over examples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from lhas_ray.scoring import per_example
from lhas_ray.scoring.projection import GradientProjector, unit_rows

FORWARD_FEATURES = frozenset({"loss", "correct", "el2n", "emb"})
GRAD_FEATURES = frozenset({"grad", "grad_norm"})


def forward_stats(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], want_emb: bool = True
) -> dict[str, np.ndarray]:
    """Loss, exact match, token accuracy, EL2N and mean-pooled last hidden state of every example, in one pass.

    Exact match is "every answer token is the argmax": with teacher forcing this equals greedy-decoding exact match.
    Token accuracy (the share of answer tokens that are the argmax) is next-token accuracy, for text stages.
    """
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    att = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=att, output_hidden_states=want_emb)
        logits = out.logits[:, :-1].float()
        target = labels[:, 1:]
        mask = target != -100
        safe = target.clamp_min(0)
        tok_loss = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none") * mask
        n_tok = mask.sum(1).clamp_min(1)
        loss = tok_loss.sum(1) / n_tok
        hit = logits.argmax(-1) == safe
        correct = (hit | ~mask).all(1) & mask.any(1)
        token_acc = (hit & mask).sum(1) / n_tok
        probs = logits.softmax(-1)
        onehot = F.one_hot(safe, probs.shape[-1]).to(probs.dtype)
        el2n = ((probs - onehot).norm(dim=-1) * mask).sum(1) / n_tok
        stats = {"loss": loss, "correct": correct, "token_acc": token_acc, "el2n": el2n}
        if want_emb:
            hidden = out.hidden_states[-1].float()
            w = att.unsqueeze(-1).to(hidden.dtype)
            stats["emb"] = (hidden * w).sum(1) / w.sum(1).clamp_min(1)
    return {k: v.cpu().numpy() for k, v in stats.items()}


def select_grad_params(model: torch.nn.Module, spec: list[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters whose per-example gradients are projected: 'last_block', 'lm_head', 'all', or name substrings.

    With LoRA on, only trainable (adapter) parameters qualify, as in LESS: 'last_block' is then the last block's
    adapters (the backward stops there, so scoring costs about one forward pass) and 'all' every adapter (LESS's
    choice: the batch's one backward then runs through the whole model).
    """
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    adapters = len(trainable) < len(named)
    chosen: set[str] = set()
    for item in spec:
        if item == "all":
            chosen |= trainable if adapters else set(named)
        elif item == "last_block":
            blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=None)
            if blocks is None:
                raise ValueError("scoring.grad_params: 'last_block' needs a model with a list of blocks")
            ids = {id(p) for p in blocks[-1].parameters()}
            chosen |= {n for n, p in named.items() if id(p) in ids}
        elif item == "lm_head":
            ids = {id(p) for p in model.get_output_embeddings().parameters()}
            chosen |= {n for n, p in named.items() if id(p) in ids}
        else:
            matches = {n for n in named if item in n}
            if not matches:
                raise ValueError(f"scoring.grad_params: no parameter name contains {item!r}")
            chosen |= matches
    if adapters:
        chosen &= trainable
        if not chosen:
            raise ValueError(f"scoring.grad_params {spec}: none of those parameters is a LoRA adapter")
    return {n: named[n] for n in sorted(chosen)}


class _LookupThenForward(torch.nn.Module):
    """The model with its own input-embedding lookup in front, as one module for ``functional_call``.

    Calling the model on ``input_ids`` directly would run HF's padding check (``pad_token_id in input_ids``), a
    data-dependent branch vmap cannot take; looking the tokens up here and passing ``inputs_embeds`` avoids it, and
    keeps the lookup inside the reparametrised call, so the embedding weight is the one being differentiated.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=self.model.get_input_embeddings()(input_ids)).logits


@dataclass(frozen=True)
class AdamMoments:
    """Adam's first and second moments of some parameters at the end of a stage, and its betas and eps."""

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def adam_precondition(grads: dict[str, torch.Tensor], moments: AdamMoments) -> dict[str, torch.Tensor]:
    """LESS's Adam gradient feature of each example (Xia et al. 2024): the update Adam would take for it alone,

        Gamma = m' / (sqrt(v') + eps),   m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,

    with g the example's gradient ([B, *shape] per parameter) and m, v the saved moments of that parameter.
    """
    missing = sorted(set(grads) - set(moments.exp_avg))
    if missing:
        raise KeyError(f"no saved Adam moments for parameter(s) {missing}")
    b1, b2 = moments.betas
    out = {}
    for name, g in grads.items():
        m = moments.exp_avg[name].to(g.device, g.dtype)
        v = moments.exp_avg_sq[name].to(g.device, g.dtype)
        out[name] = (b1 * m + (1 - b1) * g) / (torch.sqrt(b2 * v + (1 - b2) * g * g) + moments.eps)
    return out


def per_example_grads(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    method: str = "auto",
) -> dict[str, torch.Tensor]:
    """Gradient [B, *shape] of each example's answer loss w.r.t. each of ``params``.

    ``method``: 'batched' (one backward, ``per_example``; ``per_example.Unsupported`` if a parameter is not
    covered), 'vmap', or 'auto': batched and checked against autograd's batch gradient, else vmap.
    """
    if method != "vmap":
        try:
            outers = per_example.capture(model, params, batch, verify=method == "auto")
            return {n: per_example.materialise(outers[n], p.shape) for n, p in params.items()}
        except per_example.Unsupported:
            if method == "batched":
                raise
    return vmap_per_example_grads(model, params, batch)


def gradient_features(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    projector: GradientProjector,
    precondition: AdamMoments | None = None,
    method: str = "batched",
    verify: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(unit-normalised projected gradients [B, dim], gradient norms [B]) of every example in the batch.

    ``method`` 'batched': one backward (``per_example.capture``, ``verify`` as there); plain gradients are then
    projected and normed from their outer-product terms, never formed where the projection is Kronecker-structured;
    Adam preconditioning is elementwise, so it forms them (still one backward). 'vmap': ``vmap_per_example_grads``.
    """
    if method == "vmap":
        grads = vmap_per_example_grads(model, params, batch)
    else:
        outers = per_example.capture(model, params, batch, verify=verify)
        if precondition is None:
            shapes = {n: p.shape for n, p in params.items()}
            sq = sum(per_example.squared_norms(outers[n], shapes[n]) for n in params)
            proj = per_example.project_outers(outers, shapes, projector)
            return unit_rows(proj), sq.sqrt().cpu().numpy().astype(np.float32)
        grads = {n: per_example.materialise(outers[n], p.shape) for n, p in params.items()}
    if precondition is not None:  # LESS's Adam features: the update Adam would take for each example
        grads = adam_precondition(grads, precondition)
    return projector(grads)


def vmap_per_example_grads(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Gradient of each example's answer loss w.r.t. ``params``, batched with vmap (any parameter, any layer).

    Token ids go through vmap and the embedding lookup runs inside ``functional_call`` with ``params``, so a tensor
    shared by the input embedding and the LM head (``tie_word_embeddings``) gets both paths of its gradient, as a
    plain backward does; parameters left out of ``params`` (a frozen embedding under LoRA, say) stay the module's
    own, as constants. No attention mask: right padding plus causal attention means answer positions never see the
    padding, and this keeps HF's mask helpers (data-dependent branches) out of vmap.
    """
    device = next(model.parameters()).device
    wrapped = _LookupThenForward(model)
    # tie_weights (functional_call's default) makes a tied tensor given under one name stand for all of its names
    detached = {f"model.{n}": p.detach() for n, p in params.items()}
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)

    def loss_fn(p: dict[str, torch.Tensor], tok: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        logits = functional_call(wrapped, p, args=(tok[None],), strict=False)
        return F.cross_entropy(logits[0, :-1].float(), lab[1:], ignore_index=-100)

    # torch.func.grad differentiates w.r.t. its argument even under no_grad, which stops autograd from also
    # recording the closed-over (frozen) parameters
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA on CPU falls back to a slower rule
        grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(detached, ids, labels)
    return {n: grads[f"model.{n}"] for n in params}
