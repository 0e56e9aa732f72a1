"""Per-example gradients of Linear, HF Conv1D, Embedding and LayerNorm parameters from ONE batched backward.

For y = x W^T, example n's weight gradient is G_n = sum_t g_t x_t^T, with x_t the layer's input and g_t = dL/dy_t at
token t: forward hooks keep each call's input and output, and one ``autograd.grad`` of the batch's summed
per-example losses returns every g. Summing is what keeps examples apart: example n's loss depends only on its own
activations (no batch-coupling layer), so dL/dy_t of its tokens is its own loss's gradient. A parameter's gradient
is then a list of ``Outer`` terms, one per module call that uses it (a tied embedding has two: the lookup, a
scatter-add of g at the token ids, and the LM head); ``materialise`` sums them exactly, ``project_outers`` projects
them without forming G, ``squared_norms`` takes norms from Gram matrices where that is cheaper. LoRA adapters are
plain ``nn.Linear`` modules (peft's lora_A / lora_B), so they are covered as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from lhas_ray.scoring.projection import GradientProjector

CHUNK_ELEMENTS = 1 << 25  # floats materialised at once (examples x parameter size) when a gradient must be formed


class Unsupported(Exception):
    """The batched path cannot cover these parameters (an unsupported module, or a use no hook saw)."""


@dataclass(frozen=True)
class Outer:
    """One call's share of a parameter's per-example gradient: G_n = sum_t rows[n, t] cols[n, t]^T.

    ``rows``: [N, T, R] float, or [N, T] long token ids (one-hot rows: an embedding lookup); ``cols``: [N, T, C], or
    None for a 1-D parameter, whose gradient is sum_t rows[n, t].
    """

    rows: torch.Tensor
    cols: torch.Tensor | None
    n_rows: int

    @property
    def indexed(self) -> bool:
        return not self.rows.is_floating_point()


def _supported(module: torch.nn.Module, attr: str) -> bool:
    kind = type(module)  # exact types: a subclass may override forward (quantised layers, MultiheadAttention's)
    if kind in (torch.nn.Linear, Conv1D):
        return attr in ("weight", "bias")
    if kind is torch.nn.Embedding:
        return attr == "weight" and module.max_norm is None
    if kind is torch.nn.LayerNorm:
        return attr in ("weight", "bias") and len(module.normalized_shape) == 1
    return False


def parameter_uses(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter]
) -> dict[str, list[tuple[torch.nn.Module, str]]]:
    """Every (module, attribute) holding each parameter; ``Unsupported`` if one is not a supported layer."""
    by_id = {id(p): n for n, p in params.items()}
    uses: dict[str, list[tuple[torch.nn.Module, str]]] = {n: [] for n in params}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in by_id:
                if not _supported(module, attr):
                    raise Unsupported(f"{by_id[id(p)]} is held by a {type(module).__name__} ({attr})")
                uses[by_id[id(p)]].append((module, attr))
    unheld = [n for n, u in uses.items() if not u]
    if unheld:
        raise Unsupported(f"no module holds {unheld[:3]}")
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:  # the hooked outputs would not carry gradients
        raise Unsupported(f"parameters without requires_grad: {frozen[:3]}")
    return uses


def summed_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each example's mean answer-token loss (next-token cross-entropy, labels -100 ignored)."""
    target = labels[:, 1:]
    mask = target != -100
    tok = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target.clamp_min(0), reduction="none") * mask
    return (tok.sum(1) / mask.sum(1).clamp_min(1)).sum()


def _outer(module: torch.nn.Module, attr: str, x: torch.Tensor, g: torch.Tensor, n: int) -> Outer:
    """The Outer term of ``module.attr`` for one call with input ``x`` and output gradient ``g``."""
    if x.shape[0] != n or g.shape[0] != n:  # e.g. position ids [1, T], whose output the whole batch shares
        raise Unsupported(f"a {type(module).__name__}'s input or output is shared by the batch (first dim not {n})")
    g = g.float().reshape(n, -1, g.shape[-1])
    if isinstance(module, torch.nn.Embedding):
        ids = x.reshape(n, -1)
        if module.padding_idx is not None:  # autograd leaves the padding row's gradient at zero
            g = g * (ids != module.padding_idx).unsqueeze(-1)
        return Outer(ids, g, module.num_embeddings)
    x = x.float().reshape(n, -1, x.shape[-1])
    if attr == "bias":
        return Outer(g, None, g.shape[-1])
    if isinstance(module, torch.nn.LayerNorm):  # y = x_hat * w + b: dL/dw = sum_t g_t * x_hat_t
        x_hat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
        return Outer(g * x_hat, None, g.shape[-1])
    if isinstance(module, Conv1D):  # y = x W + b, W is (in, out)
        return Outer(x, g, x.shape[-1])
    return Outer(g, x, g.shape[-1])  # nn.Linear: y = x W^T + b, W is (out, in)


def capture(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    verify: bool = False,
) -> dict[str, list[Outer]]:
    """One batched forward and backward: every parameter's gradient as a list of ``Outer`` terms.

    ``verify``: also take autograd's own batch gradient of ``params`` and check the terms sum to it, which catches
    a use the hooks cannot see (a weight used functionally, an output changed in place); ``Unsupported`` if not.
    """
    uses = parameter_uses(model, params)
    modules = {id(m): m for pairs in uses.values() for m, _ in pairs}
    calls: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {k: [] for k in modules}

    def keep(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        x = args[0] if args else kwargs["input"]
        calls[id(module)].append((x.detach(), output))

    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    handles = [m.register_forward_hook(keep, with_kwargs=True) for m in modules.values()]
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, attention_mask=None if mask is None else mask.to(device)).logits
            loss = summed_example_losses(logits, batch["labels"].to(device))
    finally:
        for h in handles:
            h.remove()
    outputs = [out for pairs in calls.values() for _, out in pairs if out.requires_grad]
    wrt = outputs + (list(params.values()) if verify else [])
    grads = dict(zip(map(id, wrt), torch.autograd.grad(loss, wrt, allow_unused=True), strict=True))

    def grad_of(out: torch.Tensor) -> torch.Tensor:
        g = grads.get(id(out))
        return torch.zeros_like(out) if g is None else g

    n = len(ids)
    outers = {
        name: [_outer(m, attr, x, grad_of(out), n) for m, attr in pairs for x, out in calls[id(m)]]
        for name, pairs in uses.items()
    }
    silent = [name for name, terms in outers.items() if not terms]
    if silent:
        raise Unsupported(f"no module call used {silent[:3]} in the forward pass")
    if verify:
        for name, p in params.items():
            _check_batch_sum(name, outers[name], p.shape, grads[id(p)])
    return outers


def _check_batch_sum(name: str, outers: list[Outer], shape: torch.Size, want: torch.Tensor | None) -> None:
    """``Unsupported`` unless the terms, summed over the batch, give autograd's batch gradient ``want``."""
    got = materialise([_batch_summed(o) for o in outers], shape)[0]
    tol = 1e-3 if want is None or want.dtype == torch.float32 else 3e-2  # half-precision models: looser
    want = torch.zeros_like(got) if want is None else want.float()
    err = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    if err > tol:
        raise Unsupported(f"the hooked gradient of {name} misses a use of it (relative error {err:.2g})")


def _batch_summed(o: Outer) -> Outer:
    """The batch's total as one pseudo-example: all N x T tokens in one row."""
    flat = o.rows.reshape(1, -1, *o.rows.shape[2:])
    return Outer(flat, None if o.cols is None else o.cols.reshape(1, -1, o.cols.shape[-1]), o.n_rows)


def materialise(outers: list[Outer], shape: torch.Size, examples: slice = slice(None)) -> torch.Tensor:
    """The exact per-example gradients [n, *shape] of the chosen examples: the sum of every Outer term."""
    total = None
    for o in outers:
        rows = o.rows[examples]
        if o.cols is None:
            part = rows.sum(1)
        elif o.indexed:
            cols = o.cols[examples]
            part = cols.new_zeros(len(cols), o.n_rows, cols.shape[-1])
            part.scatter_add_(1, rows.unsqueeze(-1).expand_as(cols), cols)
        else:
            part = torch.einsum("ntr,ntc->nrc", rows, o.cols[examples])
        total = part if total is None else total + part
    return total.reshape(len(total), *shape)


def example_chunks(n: int, numel: int) -> list[slice]:
    """Slices of the batch small enough that forming their gradients holds at most ``CHUNK_ELEMENTS`` floats."""
    step = max(1, CHUNK_ELEMENTS // max(numel, 1))
    return [slice(i, i + step) for i in range(0, n, step)]


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner products of token vectors [N, Ta, Tb]; a long tensor stands for one-hot rows at those ids."""
    if a.is_floating_point() and b.is_floating_point():
        return a @ b.transpose(1, 2)
    if not a.is_floating_point() and not b.is_floating_point():
        return (a.unsqueeze(2) == b.unsqueeze(1)).float()
    if a.is_floating_point():
        return _gram(b, a).transpose(1, 2)
    return b.gather(2, a.unsqueeze(1).expand(-1, b.shape[1], -1)).transpose(1, 2)  # [n, t, s] = b[n, s, a[n, t]]


def squared_norms(outers: list[Outer], shape: torch.Size, method: str = "auto") -> torch.Tensor:
    """||G_n||^2 per example: 'gram' from token Gram matrices, sum_ts <a_t, a_s><b_t, b_s> (no G formed), 'form' from
    G formed, 'auto' whichever costs fewer flops (1-D parameters: always formed); a chunk of examples at a time."""
    n, numel = len(outers[0].rows), int(torch.Size(shape).numel())
    width = sum(o.rows.shape[1] for o in outers)
    if method == "auto":
        gram_cost = width * width * (shape[0] + numel // shape[0])
        form_cost = sum(o.rows.shape[1] * (numel // shape[0] if o.indexed else numel) for o in outers)
        method = "gram" if gram_cost < form_cost else "form"
    if method == "form" or any(o.cols is None for o in outers):
        return torch.cat([materialise(outers, shape, s).flatten(1).pow(2).sum(1) for s in example_chunks(n, numel)])
    return torch.cat(
        [
            sum((_gram(u.rows[s], v.rows[s]) * _gram(u.cols[s], v.cols[s])).sum((1, 2)) for u in outers for v in outers)
            for s in example_chunks(n, width * width)
        ]
    )


def project_outers(
    outers: dict[str, list[Outer]], shapes: dict[str, torch.Size], projector: GradientProjector
) -> torch.Tensor:
    """Projected per-example gradients [N, dim], summed over parameters, without forming a Kronecker-projected G."""
    total = None
    for i, name in enumerate(projector.names):
        terms = outers[name]
        if projector.is_kronecker(i) and all(o.cols is not None for o in terms):
            p_r, p_c = projector.matrices(i, terms[0].rows.device)
            part = sum(
                torch.einsum("ntr,ntc->nrc", p_r.T[o.rows] if o.indexed else o.rows @ p_r.T, o.cols @ p_c.T)
                for o in terms
            ).flatten(1)
        else:  # a dense projection (or a 1-D parameter): form G, a chunk of examples at a time
            n, numel = len(terms[0].rows), int(torch.Size(shapes[name]).numel())
            part = torch.cat(
                [projector.project(i, materialise(terms, shapes[name], s)) for s in example_chunks(n, numel)]
            )
        total = part if total is None else total + part
    return total
