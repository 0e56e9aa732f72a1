"""The default data-parallel layout (ZeRO stage 0: plain replicated AdamW, gradients all-reduced) trains the same
model as ZeRO-2 (partitioned optimizer state and gradients): same losses step by step on a seed, two gloo ranks."""

from __future__ import annotations

import numpy as np
import torch

from lhas_ray.config import ModelConfig, TrainingConfig

STEPS = 12


def _train(rank: int, zero: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: STEPS DeepSpeed steps at ZeRO ``zero`` on this rank's half of each global batch."""
    import os

    import deepspeed
    import torch.distributed as dist

    from lhas_ray.model import build_model, encode
    from lhas_ray.tasks import builtin as b
    from lhas_ray.training.engine import deepspeed_config, disable_cpu_shm_op, make_engine

    os.environ.update({"LOCAL_RANK": str(rank), "RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    disable_cpu_shm_op()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    deepspeed.init_distributed(dist_backend="gloo")
    model_cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, max_length=24)
    model, tok = build_model(model_cfg, 0)  # the same seeded weights on both ranks
    train = TrainingConfig(batch_size=8, num_workers=2, zero_stage=zero, grad_clip=1.0)
    engine = make_engine(model, deepspeed_config(train, model_cfg, 2), 3e-3, 0.01, STEPS)
    prompts, answers = b.generate(np.array(["reverse"] * 8 * STEPS), np.random.default_rng(3), 2, 4)
    enc = encode(tok, prompts, answers, 24)
    losses = []
    for step in range(STEPS):
        rows = slice(step * 8 + rank * 4, step * 8 + rank * 4 + 4)  # this rank's micro-batch of the global batch
        logits = engine(input_ids=enc["input_ids"][rows]).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), enc["labels"][rows, 1:].flatten(), ignore_index=-100
        )
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / 2)
    if rank == 0:
        torch.save(losses, f"{out}/zero{zero}.pt")
    dist.destroy_process_group()


def test_default_layout_is_zero0_and_trains_as_zero2_does(tmp_path):
    """Both layouts see the same batches from the same weights; their global-batch losses agree at every step (up to
    float rounding in the reductions), and the model does learn (the comparison is not of two flat lines)."""
    import torch.multiprocessing as mp

    assert TrainingConfig().zero_stage == 0
    for zero in (0, 2):
        mp.spawn(_train, args=(zero, str(tmp_path / f"init{zero}"), str(tmp_path)), nprocs=2, join=True)
    z0, z2 = torch.load(tmp_path / "zero0.pt"), torch.load(tmp_path / "zero2.pt")
    assert len(z0) == len(z2) == STEPS
    np.testing.assert_allclose(z2, z0, rtol=2e-4)
    assert z0[-1] < z0[0] - 0.1, z0


class _StubEngine:
    """What ``train_steps`` calls on a DeepSpeed engine; its loss at the n-th call is 10 * rank + n, known in advance;
    it keeps the batches it was given."""

    def __init__(self, rank: int):
        self.rank, self.calls, self.device, self.batches = rank, 0, torch.device("cpu"), []

    def __call__(self, **batch):
        self.calls += 1
        self.batches.append(batch)
        return type("Out", (), {"loss": torch.tensor(float(10 * self.rank + self.calls))})()

    def backward(self, loss):
        pass

    def step(self):
        pass

    def train(self):
        pass


def _curve(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks running ``train_steps`` on the stub engine; rank 0 saves the curve rows."""
    import torch.distributed as dist

    from lhas_ray.model import build_model
    from lhas_ray.training.stage import train_steps

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    _, tok = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2, max_length=24), 0)
    import pyarrow as pa

    examples = pa.table({"prompt": ["ab", "cd", "ef", "gh"], "answer": ["ba", "dc", "fe", "hg"]})
    evals = iter(range(100))
    rows = train_steps(
        _StubEngine(rank), tok, examples, steps=7, micro_batch=2, max_length=24, seed=0, eval_every=3,
        evaluate=lambda: {"accuracy": float(next(evals))},
    )  # fmt: skip
    if rank == 0:
        torch.save(rows, f"{out}/curve.pt")
    dist.destroy_process_group()


def test_train_loss_rows_are_the_mean_over_ranks_at_every_step_in_step_order(tmp_path):
    """Step n's train loss is the mean of rank 0's n and rank 1's 10 + n, i.e. n + 5, whether the losses are reduced per
    step or per eval interval; eval rows come at step 0, every 3 steps and at the end, each after its step's loss."""
    import torch.multiprocessing as mp

    mp.spawn(_curve, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rows = torch.load(tmp_path / "curve.pt")
    got = [(r["step"], r["split"], r["value"]) for r in rows]
    train = lambda n: (n, "train", n + 5.0)  # noqa: E731
    assert got == [
        (0, "eval", 0.0),
        *map(train, (1, 2, 3)), (3, "eval", 1.0),
        *map(train, (4, 5, 6)), (6, "eval", 2.0),
        train(7), (7, "eval", 3.0),
    ]  # fmt: skip


def test_each_step_trains_on_encode_of_its_rows_tokenised_once(monkeypatch):
    """Rows are tokenised once per stage; every step's batch still equals ``encode`` of that step's rows (the batch
    order of ``batch_indices``), truncated rows and rows seen in several steps included."""
    import pyarrow as pa

    from lhas_ray.model import build_model, encode
    from lhas_ray.training import stage
    from lhas_ray.training.stage import batch_indices, train_steps

    _, tok = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2, max_length=12), 0)
    rng = np.random.default_rng(0)
    prompts = ["".join(rng.choice(list("abcdef"), rng.integers(1, 9))) for _ in range(10)]
    answers = [p[::-1] for p in prompts]  # up to 8 + 8 + EOS tokens: some rows exceed max_length 12
    calls = []
    real = stage.tokenize
    monkeypatch.setattr(stage, "tokenize", lambda *a: calls.append(len(a[1])) or real(*a))
    engine = _StubEngine(0)
    table = pa.table({"prompt": prompts, "answer": answers})
    train_steps(engine, tok, table, steps=6, micro_batch=4, max_length=12, seed=3, eval_every=100)
    order = batch_indices(10, 4, 6, 3)
    assert calls == [len(np.unique(order))]  # one tokeniser call, for the rows the steps use
    seen = engine.batches
    assert len(seen) == 6
    for step, batch in enumerate(seen):
        want = encode(tok, np.array(prompts)[order[step]], np.array(answers)[order[step]], 12)
        assert batch.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(batch[key], want[key], rtol=0, atol=0)
    assert max(b["input_ids"].shape[1] for b in seen) == 12  # truncation was exercised
