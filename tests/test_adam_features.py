"""LESS's Adam gradient features: Gamma computed by hand, moments gathered from DeepSpeed, saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lhas_ray.config import ModelConfig
from lhas_ray.model import build_model, encode
from lhas_ray.scoring.features import AdamMoments, GradientProjector, adam_precondition, select_grad_params
from lhas_ray.scoring.score import Scorer
from lhas_ray.store import ResultStore
from lhas_ray.tasks import builtin as b
from lhas_ray.training.moments import load_moments, save_moments


def _batch(n: int = 6):
    prompts, answers = b.generate(np.array(["reverse"] * n), np.random.default_rng(2), 2, 4)
    import pyarrow as pa

    return pa.table({"example_id": pa.array(np.arange(n), pa.int64()), "prompt": prompts, "answer": answers})


def _random_moments(params: dict[str, torch.nn.Parameter], seed: int = 0) -> AdamMoments:
    gen = torch.Generator().manual_seed(seed)
    m = {n: 1e-3 * torch.randn(p.shape, generator=gen) for n, p in params.items()}
    v = {n: 1e-6 * torch.rand(p.shape, generator=gen) for n, p in params.items()}
    return AdamMoments(m, v, betas=(0.8, 0.95), eps=1e-6)


def test_adam_features_equal_gamma_computed_by_hand():
    """Gamma = (b1 m + (1-b1) g) / (sqrt(b2 v + (1-b2) g^2) + eps) from one backward per example, then projected."""
    model, tok = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, max_length=24), 0)
    model.eval()
    params = select_grad_params(model, ["last_block", "lm_head"])
    moments = _random_moments(params)
    batch = _batch()
    enc = encode(
        tok,
        batch.column("prompt").to_numpy(zero_copy_only=False),
        batch.column("answer").to_numpy(zero_copy_only=False),
        24,
    )
    b1, b2, eps = 0.8, 0.95, 1e-6
    by_hand: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for i in range(len(batch)):
        model.zero_grad()
        logits = model(input_ids=enc["input_ids"][i : i + 1]).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], enc["labels"][i, 1:], ignore_index=-100)
        loss.backward()
        for n, p in params.items():
            g = p.grad.detach().clone()
            m, v = moments.exp_avg[n], moments.exp_avg_sq[n]
            by_hand[n].append((b1 * m + (1 - b1) * g) / (torch.sqrt(b2 * v + (1 - b2) * g**2) + eps))
    hand = {n: torch.stack(gs) for n, gs in by_hand.items()}
    got = Scorer(model, tok, {"grad", "grad_norm"}, max_length=24, grad_dim=8, precondition=moments).score(batch)
    proj, norm = GradientProjector({n: p.shape for n, p in params.items()}, 8, 0)(hand)
    np.testing.assert_allclose(got["grad_norm"], norm, rtol=1e-4)
    np.testing.assert_allclose(got["grad"], proj, rtol=1e-3, atol=1e-5)
    plain = Scorer(model, tok, {"grad_norm"}, max_length=24, grad_dim=8).score(batch)["grad_norm"]
    assert not np.allclose(plain, got["grad_norm"], rtol=1e-2)  # preconditioning really changed the features


def test_missing_moments_name_the_parameter():
    model, _ = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2), 0)
    params = select_grad_params(model, ["last_block"])
    moments = _random_moments(dict(list(params.items())[:1]))
    grads = {n: torch.zeros((2, *p.shape)) for n, p in params.items()}
    with pytest.raises(KeyError, match="no saved Adam moments"):
        adam_precondition(grads, moments)


def test_moments_round_trip_through_the_store(tmp_path):
    model, _ = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2), 0)
    moments = _random_moments(select_grad_params(model, ["lm_head"]), seed=3)
    store = ResultStore(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no adam_moments"):
        load_moments(store, "checkpoints/_base/s0")
    save_moments(store, "checkpoints/_base/s0", moments)
    back = load_moments(store, "checkpoints/_base/s0")
    assert back.betas == (0.8, 0.95) and back.eps == 1e-6
    for n in moments.exp_avg:
        assert torch.equal(back.exp_avg[n], moments.exp_avg[n]) and torch.equal(
            back.exp_avg_sq[n], moments.exp_avg_sq[n]
        )


def _train_and_gather(rank: int, zero: int, init_file: str, out: str) -> None:
    """One gloo process: 3 DeepSpeed steps at ZeRO ``zero``, then the gathered moments and torch's own view."""
    import os

    import deepspeed
    import torch.distributed as dist

    from lhas_ray.config import TrainingConfig
    from lhas_ray.training.engine import deepspeed_config, disable_cpu_shm_op, make_engine
    from lhas_ray.training.moments import gather_moments

    os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"})  # what a launcher would set
    torch.set_num_threads(1)
    disable_cpu_shm_op()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model, tok = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, max_length=24), 0)
    ds = deepspeed_config(TrainingConfig(batch_size=4, num_workers=1, zero_stage=zero), ModelConfig(), 1)
    engine = make_engine(model, ds, 1e-2, 0.0, 3)
    batch = _batch(4)
    enc = encode(
        tok,
        batch.column("prompt").to_numpy(zero_copy_only=False),
        batch.column("answer").to_numpy(zero_copy_only=False),
        24,
    )
    for _ in range(3):
        logits = engine(input_ids=enc["input_ids"]).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), enc["labels"][:, 1:].flatten(), ignore_index=-100
        )
        engine.backward(loss)
        engine.step()
    names = list(select_grad_params(engine.module, ["last_block", "lm_head"]))
    moments = gather_moments(engine, names)
    torch.save({"m": moments.exp_avg, "v": moments.exp_avg_sq, "betas": moments.betas}, f"{out}/zero{zero}.pt")
    dist.destroy_process_group()


def test_moments_gathered_under_zero2_equal_zero0s_optimizer_state(tmp_path):
    """ZeRO-2 partitions Adam's state into flat buffers; gathered back, it equals the plain torch state of ZeRO-0."""
    import torch.multiprocessing as mp

    for zero in (0, 2):
        mp.spawn(_train_and_gather, args=(zero, str(tmp_path / f"init{zero}"), str(tmp_path)), nprocs=1, join=True)
    z0, z2 = torch.load(tmp_path / "zero0.pt"), torch.load(tmp_path / "zero2.pt")
    assert z0["betas"] == z2["betas"] == (0.9, 0.999)
    assert set(z0["m"]) == set(z2["m"]) and len(z0["m"]) >= 2
    for n in z0["m"]:
        assert z0["v"][n].abs().sum() > 0, n  # trained: the second moment is not zero
        torch.testing.assert_close(z2["m"][n], z0["m"][n], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(z2["v"][n], z0["v"][n], rtol=1e-4, atol=1e-10)
