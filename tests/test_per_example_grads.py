"""Batched per-example gradients (one backward, scoring/per_example.py) against one backward per example.

The reference in every test is a Python loop here: each example alone, unpadded, its mean answer-token
cross-entropy written out with ``F.cross_entropy``, and ``torch.autograd.grad`` of that loss.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from lhas_ray.config import ModelConfig
from lhas_ray.model import build_model, encode
from lhas_ray.scoring import per_example
from lhas_ray.scoring.features import gradient_features, per_example_grads, select_grad_params
from lhas_ray.scoring.projection import GradientProjector, kron_split
from lhas_ray.scoring.score import Scorer
from lhas_ray.tasks import builtin as b
from tests.helpers import reverse_pool_spec, tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


class TinyLM(torch.nn.Module):
    """Embedding (token 3 its padding_idx, whose row autograd never updates), a causal running mean (tokens of one
    example interact), nn.Linear and HF Conv1D with biases, a bias-free head."""

    def __init__(self, vocab: int = 13, d: int = 6):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d, padding_idx=3)
        self.lin = torch.nn.Linear(d, 7)
        self.conv = Conv1D(5, 7)  # weight (in=7, out=5), y = x W + b
        self.head = torch.nn.Linear(5, vocab, bias=False)
        torch.nn.init.normal_(self.conv.bias)
        torch.nn.init.normal_(self.conv.weight)

    def get_input_embeddings(self) -> torch.nn.Embedding:  # what the vmap path looks tokens up with
        return self.emb

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> SimpleNamespace:
        h = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        h = h.cumsum(1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1)
        return SimpleNamespace(logits=self.head(torch.tanh(self.conv(torch.tanh(self.lin(h))))))


def padded_batch(lengths: list[int], answer: list[int], vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded token ids (pad 0), labels -100 except on each example's last ``answer`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (n, a) in enumerate(zip(lengths, answer, strict=True)):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
        labels[i, n - a : n] = ids[i, n - a : n]
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}


def one_backward_per_example(model, params: dict, batch: dict) -> list[dict[str, torch.Tensor]]:
    """The reference: each example alone and unpadded, its mean answer loss, ``torch.autograd.grad``."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        n = int(mask.sum())
        logits = model(input_ids=ids[None, :n]).logits[0]
        loss = F.cross_entropy(logits[:-1], labels[1:n], ignore_index=-100)
        out.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))
    return out


def assert_equal_to_reference(got: dict[str, torch.Tensor], want: list[dict[str, torch.Tensor]]) -> None:
    for i, one in enumerate(want):
        for name, g in one.items():
            torch.testing.assert_close(
                got[name][i], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name, i=i: f"{n}[{i}]: {m}"
            )


@pytest.fixture(scope="module")
def gpt2():
    model, tok = build_model(ModelConfig(max_length=32), 0)
    spec = reverse_pool_spec(40, eval_size=1, probe_size=1)
    rows = b.pool(spec, 0, 2, 5).slice(0, 6)
    enc = encode(tok, rows.column("prompt").to_pylist(), rows.column("answer").to_pylist(), 32)
    assert len(set(enc["attention_mask"].sum(1).tolist())) > 1  # variable lengths, so the batch is padded
    return model.eval(), tok, enc, rows


def test_linear_and_conv1d_with_bias_equal_one_backward_per_example():
    model = TinyLM()
    batch = padded_batch([5, 9, 3, 7], [2, 4, 1, 3], vocab=13)
    batch["input_ids"][1, 2] = 3  # the padding_idx inside an example (as when pad = eos, SmolLM2's tokenizer)
    params = {n: p for n, p in model.named_parameters()}
    got = per_example_grads(model, params, batch, method="batched")
    assert_equal_to_reference(got, one_backward_per_example(model, params, batch))


def test_tied_embedding_of_tiny_gpt2_equals_one_backward_per_example(gpt2):
    """The tied wte gets both uses: the lookup (scatter-add at the token ids) and the LM head; the last block's
    Conv1D and LayerNorm parameters come along (the scoring default)."""
    model, _, enc, _ = gpt2
    params = select_grad_params(model, ["last_block", "lm_head"])
    assert params["transformer.wte.weight"] is model.get_output_embeddings().weight
    got = per_example_grads(model, params, enc, method="batched")
    assert_equal_to_reference(got, one_backward_per_example(model, params, enc))


@pytest.mark.parametrize("base", ["gpt2", "llama"])
def test_lora_adapters_equal_one_backward_per_example(base, gpt2):
    """peft's lora_A / lora_B over GPT-2's Conv1D (fan_in_fan_out) and over Llama's nn.Linear projections."""
    from lhas_ray.lora import apply_lora

    if base == "gpt2":
        model, batch = apply_lora(build_model(ModelConfig(max_length=32), 0)[0], r=4, alpha=8), gpt2[2]
    else:
        model = apply_lora(tiny_llama(), r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        batch = padded_batch([6, 11, 4, 9], [3, 5, 2, 4], vocab=40)
    with torch.no_grad():  # lora_B starts at zero, which would leave lora_A's gradients zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    params = select_grad_params(model.eval(), ["all"])
    assert params and all("lora_" in n for n in params)
    got = per_example_grads(model, params, batch, method="batched")
    assert_equal_to_reference(got, one_backward_per_example(model, params, batch))


def test_kronecker_projection_equals_the_kronecker_matrix_times_the_reference_gradient(gpt2):
    """P vec(G) with P = P_r ⊗ P_c built explicitly (1-D parameters: their dense matrix), from the reference G."""
    model, _, enc, _ = gpt2
    params = select_grad_params(model, ["last_block", "lm_head"])
    shapes = {n: p.shape for n, p in params.items()}
    projector = GradientProjector(shapes, 12, seed=3)
    assert kron_split(12) == (3, 4)
    want = torch.zeros(len(enc["input_ids"]), 12)
    for i, one in enumerate(one_backward_per_example(model, params, enc)):
        for k, name in enumerate(projector.names):
            mats = projector.matrices(k, torch.device("cpu"))
            full = torch.kron(*mats) if len(mats) == 2 else mats[0].T  # [12, numel]
            assert full.shape == (12, shapes[name].numel())
            want[i] += full @ one[name].flatten()
    outers = per_example.capture(model, params, enc)
    got = per_example.project_outers(outers, shapes, projector)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    grads = {n: per_example.materialise(outers[n], s) for n, s in shapes.items()}
    torch.testing.assert_close(sum(projector.project(k, grads[n]) for k, n in enumerate(projector.names)), want)
    unit, _ = gradient_features(model, params, enc, projector)
    np.testing.assert_allclose(unit, (want / want.norm(dim=1, keepdim=True)).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gram", "form"])
def test_grad_norm_equals_the_norm_of_the_reference_gradient(gpt2, method):
    model, tok, enc, rows = gpt2
    params = select_grad_params(model, ["last_block", "lm_head"])
    want = torch.stack(
        [torch.sqrt(sum(g.pow(2).sum() for g in one.values())) for one in one_backward_per_example(model, params, enc)]
    )
    outers = per_example.capture(model, params, enc)
    got = torch.sqrt(sum(per_example.squared_norms(outers[n], p.shape, method) for n, p in params.items()))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    scored = Scorer(model, tok, {"grad_norm"}, max_length=32, grad_dim=8).score(rows)["grad_norm"]
    np.testing.assert_allclose(scored, want.numpy(), rtol=1e-4)


def test_a_use_no_hook_sees_is_caught_and_vmap_takes_over():
    """A weight also used functionally (here the embedding reused as the output matrix through F.linear): the batched
    terms miss that use, the check against autograd's batch gradient says so, and 'auto' falls back to vmap."""

    class FunctionalTie(TinyLM):
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            h = (self.emb(input_ids) if inputs_embeds is None else inputs_embeds).cumsum(1)
            return SimpleNamespace(logits=F.linear(torch.tanh(h), self.emb.weight))

    model = FunctionalTie()
    batch = padded_batch([5, 8, 3], [2, 3, 1], vocab=13)
    params = {"emb.weight": model.emb.weight}
    with pytest.raises(per_example.Unsupported, match="misses a use"):
        per_example.capture(model, params, batch, verify=True)
    got = per_example_grads(model, params, batch, method="auto")
    assert_equal_to_reference(got, one_backward_per_example(model, params, batch))


def test_a_batch_shared_module_output_falls_back_to_vmap(gpt2):
    """GPT-2's position embedding is looked up once for the whole batch ([1, T]), so its output gradient mixes the
    examples: the batched path refuses it and 'auto' gives vmap's (correct) gradients."""
    model, _, enc, _ = gpt2
    params = select_grad_params(model, ["wpe"])
    with pytest.raises(per_example.Unsupported, match="shared by the batch"):
        per_example_grads(model, params, enc, method="batched")
    got = per_example_grads(model, params, enc, method="auto")
    assert_equal_to_reference(got, one_backward_per_example(model, params, enc))
