"""Scoring: features equal a direct forward pass, rows come back sorted whatever the block order, both Ray paths."""

from __future__ import annotations

import glob
import os
import tempfile

import numpy as np
import pyarrow as pa
import pytest
import torch

from lhas_ray.config import ModelConfig
from lhas_ray.model import build_model, encode, save_pretrained
from lhas_ray.scoring.features import per_example_grads, select_grad_params
from lhas_ray.scoring.score import Scorer
from lhas_ray.tasks import builtin as b
from tests.helpers import reverse_pool_spec


@pytest.fixture(scope="module")
def pool() -> pa.Table:
    spec = reverse_pool_spec(300, eval_size=5, probe_size=5)
    return b.pool(spec, 0, 2, 5)


@pytest.fixture(scope="module")
def model_and_tok():
    model, tok = build_model(ModelConfig(max_length=32), 0)
    return model.eval(), tok


def test_scored_losses_equal_a_direct_forward_pass(pool, model_and_tok):
    model, tok = model_and_tok
    feats = Scorer(model, tok, {"loss", "emb", "el2n"}, max_length=32).score_batches(
        [pool.slice(0, 100), pool.slice(100)]
    )
    assert feats.column("example_id").to_pylist() == sorted(pool.column("example_id").to_pylist())
    by_id = dict(zip(feats.column("example_id").to_pylist(), feats.column("loss").to_pylist(), strict=True))
    rows = pool.slice(0, 10).to_pylist()
    for row in rows:  # one unpadded example at a time, through HF's own loss
        enc = encode(tok, [row["prompt"]], [row["answer"]], 32)
        with torch.no_grad():
            expected = model(**enc).loss.item()
        assert by_id[row["example_id"]] == pytest.approx(expected, rel=1e-5)
    emb = feats.column("emb").combine_chunks().values.to_numpy().reshape(feats.num_rows, -1)
    assert emb.shape == (300, 64) and np.isfinite(emb).all()


def test_row_order_does_not_depend_on_batch_order(pool, model_and_tok):
    model, tok = model_and_tok
    scorer = Scorer(model, tok, {"loss", "grad"}, max_length=32)
    forward = scorer.score_batches([pool.slice(i, 64) for i in range(0, 300, 64)])
    backward = scorer.score_batches([pool.slice(i, 64) for i in reversed(range(0, 300, 64))])
    assert forward.column("example_id").equals(backward.column("example_id"))
    np.testing.assert_allclose(forward.column("loss").to_numpy(), backward.column("loss").to_numpy(), rtol=1e-5)


def _backward_per_example(model, tok, rows, params) -> list[dict[str, torch.Tensor]]:
    """The reference: one unpadded example at a time, HF's own loss, a plain ``loss.backward()``."""
    out = []
    for row in rows:
        model.zero_grad()
        model(**encode(tok, [row["prompt"]], [row["answer"]], 32)).loss.backward()
        out.append({n: p.grad.detach().clone() for n, p in params.items()})
    model.zero_grad()
    return out


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def test_lm_head_spec_picks_the_tied_embedding(model_and_tok):
    model, _ = model_and_tok
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    params = select_grad_params(model, ["lm_head"])
    assert list(params) == ["transformer.wte.weight"]  # named_parameters lists a tied tensor once
    assert params["transformer.wte.weight"] is model.get_output_embeddings().weight


def test_vmapped_gradients_equal_one_backward_per_example(pool, model_and_tok):
    """Every selected tensor, the tied embedding/LM head included: its gradient has both the input-embedding
    and the output-projection paths, as in a plain backward."""
    model, tok = model_and_tok
    params = select_grad_params(model, ["last_block", "lm_head"])
    assert any(".h.1." in n for n in params) and not any(".h.0." in n for n in params)
    tied = "transformer.wte.weight"
    assert tied in params and params[tied] is model.get_output_embeddings().weight
    rows = pool.slice(0, 4).to_pylist()
    enc = encode(tok, [r["prompt"] for r in rows], [r["answer"] for r in rows], 32)
    grads = per_example_grads(model, params, enc)
    want = _backward_per_example(model, tok, rows, params)
    fc = next(n for n in params if n.endswith("mlp.c_fc.weight"))
    for i in range(len(rows)):
        err = {n: _rel_err(grads[n][i], want[i][n]) for n in params}
        assert err[tied] < 1e-4, f"tied embedding/LM head, example {i}: relative error {err[tied]:.3g}"
        torch.testing.assert_close(grads[fc][i], want[i][fc], rtol=1e-4, atol=1e-6)
        assert max(err.values()) < 1e-4, err


def test_grad_norm_feature_equals_the_norm_of_a_plain_backward(pool, model_and_tok):
    model, tok = model_and_tok
    scorer = Scorer(model, tok, {"grad_norm"}, max_length=32, grad_dim=16)
    rows = pool.slice(0, 4)
    got = scorer.score(rows)["grad_norm"]
    want = [
        torch.sqrt(sum(g.pow(2).sum() for g in one.values())).item()
        for one in _backward_per_example(model, tok, rows.to_pylist(), scorer.params)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_projected_gradients_are_unit_and_norms_positive(pool, model_and_tok):
    model, tok = model_and_tok
    feats = Scorer(model, tok, {"grad", "grad_norm"}, max_length=32, grad_dim=16).score(pool.slice(0, 32))
    assert feats["grad"].shape == (32, 16)
    np.testing.assert_allclose(np.linalg.norm(feats["grad"], axis=1), 1.0, rtol=1e-5)
    assert (feats["grad_norm"] > 0).all()


def test_actor_pool_scores_every_row_like_the_in_process_scorer(ray_session, pool, model_and_tok, tmp_path):
    import ray

    from lhas_ray.scoring.actor_pool import score_with_actor_pool

    model, tok = model_and_tok
    save_pretrained(model, tok, str(tmp_path / "checkpoints" / "ckpt"))  # a store folder and a path inside it
    ds = ray.data.from_arrow([pool.slice(i, 50) for i in range(0, 300, 50)])
    caches = os.path.join(tempfile.gettempdir(), "lhas-scoring-*")  # the actors' temp dir is this process's
    before = set(glob.glob(caches))
    got = score_with_actor_pool(
        ds,
        str(tmp_path),
        "checkpoints/ckpt",
        ModelConfig(max_length=32),
        {"loss"},
        max_length=32,
        batch_size=64,
        actors=1,
        num_cpus_per_actor=0.5,
    )
    want = Scorer(model, tok, {"loss"}, max_length=32).score_batches([pool])
    assert got.column("example_id").equals(want.column("example_id"))
    np.testing.assert_allclose(got.column("loss").to_numpy(), want.column("loss").to_numpy(), rtol=1e-5)
    assert set(glob.glob(caches)) == before  # the actor's checkpoint cache is gone once the checkpoint is loaded


def _score_spread_on_rank(rank: int, world: int, init_file: str, pool: pa.Table, model_dir: str, out: str) -> None:
    """One gloo rank: score ``pool`` in shares with the others, save what this rank ends up with."""
    import pyarrow.parquet as pq
    import torch.distributed as dist

    from lhas_ray.model import load_pretrained
    from lhas_ray.scoring.shards import score_spread

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, tok = load_pretrained(model_dir)
    scorer = Scorer(model.eval(), tok, {"grad", "loss"}, max_length=32, grad_dim=16)
    pq.write_table(score_spread(scorer, pool, batch_size=64), f"{out}/rank{rank}.parquet")
    dist.destroy_process_group()


def test_context_scored_in_shares_equals_one_process(pool, model_and_tok, tmp_path):
    """Context sets (LESS targets, the LHAS proxy) are scored by every Train worker in shares, then gathered."""
    import pyarrow.parquet as pq
    import torch.multiprocessing as mp

    model, tok = model_and_tok
    model_dir = save_pretrained(model, tok, str(tmp_path / "model"))
    small = pool.slice(0, 101)  # shares of 51 and 50 rows, batches that do not divide them
    mp.spawn(
        _score_spread_on_rank, args=(2, str(tmp_path / "init"), small, model_dir, str(tmp_path)), nprocs=2, join=True
    )
    whole = Scorer(model, tok, {"grad", "loss"}, max_length=32, grad_dim=16).score_batches([small])
    for rank in range(2):
        got = pq.read_table(tmp_path / f"rank{rank}.parquet")
        assert got.column("example_id").to_pylist() == sorted(small.column("example_id").to_pylist())
        np.testing.assert_allclose(got.column("loss").to_numpy(), whole.column("loss").to_numpy(), rtol=1e-4)
        grads = np.stack(got.column("grad").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(grads, np.stack(whole.column("grad").to_numpy(zero_copy_only=False)), atol=1e-4)


def test_actor_pool_builds_the_stages_seeded_adapters_as_a_worker_does(ray_session, pool, tmp_path):
    """With LoRA, gradient features are the adapters' gradients, so they depend on the adapters' initial weights: a
    scoring actor must draw the same ones as the Train worker (``with_adapters`` with the stage's seed)."""
    pytest.importorskip("peft", reason="LoRA needs peft (pip install peft)")
    import ray

    from lhas_ray.model import load_pretrained, with_adapters
    from lhas_ray.scoring.actor_pool import score_with_actor_pool

    cfg = ModelConfig(max_length=32, lora={"r": 4, "alpha": 8})
    model, tok = build_model(cfg, 0)
    save_pretrained(model, tok, str(tmp_path / "checkpoints" / "ckpt"))
    rows = pool.slice(0, 40)

    def in_process(seed: int) -> np.ndarray:
        rng_before = torch.get_rng_state()
        adapted = with_adapters(load_pretrained(str(tmp_path / "checkpoints" / "ckpt"), cfg)[0], cfg, seed=seed)
        assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left as it was
        return Scorer(adapted.eval(), tok, {"grad"}, max_length=32, grad_dim=16).score(rows)["grad"]

    got = score_with_actor_pool(
        ray.data.from_arrow([rows]),
        str(tmp_path),
        "checkpoints/ckpt",
        cfg,
        {"grad"},
        max_length=32,
        batch_size=64,
        actors=1,
        grad_dim=16,
        adapter_seed=7,
        num_cpus_per_actor=0.5,
    )
    grads = np.stack(got.column("grad").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(grads, in_process(7), rtol=1e-4, atol=1e-6)
    assert not np.allclose(in_process(8), in_process(7), atol=1e-3)  # another seed, other adapters, other features
