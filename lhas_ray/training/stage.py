"""Train one stage (or a probe, or the warm-up) through a DeepSpeed engine: the whole loop on one screen."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from lhas_ray.model import pad_tokens, tokenize
from lhas_ray.training.dist import rank, world_size


def batch_indices(n: int, global_batch: int, steps: int, seed: int) -> np.ndarray:
    """[steps, global_batch] row indices: seeded epochs of a permutation, so every example is seen before repeats."""
    rng = np.random.default_rng(seed)
    epochs = int(np.ceil(steps * global_batch / n))
    stream = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return stream[: steps * global_batch].reshape(steps, global_batch)


def train_steps(
    engine,
    tokenizer,
    examples: pa.Table,
    *,
    steps: int,
    micro_batch: int,
    max_length: int,
    seed: int,
    eval_every: int,
    evaluate: Callable[[], dict[str, float]] | None = None,
) -> list[dict]:
    """Run ``steps`` optimizer steps on ``examples`` (every rank holds all of them and takes its ``micro_batch`` slice
    of each global batch; ``TrainingConfig.micro_batch`` says how large).

    Returns learning-curve rows (step, split, metric, value): the mean train loss over ranks at every step, and
    ``evaluate()``'s metrics at step 0, every ``eval_every`` steps and at the end. Losses stay on the device and are
    averaged over ranks once per eval interval, not with a collective (and a GPU sync) at every step.
    """
    r, w = rank(), world_size()
    micro = micro_batch
    prompts = np.asarray(examples.column("prompt").to_numpy(zero_copy_only=False))
    answers = np.asarray(examples.column("answer").to_numpy(zero_copy_only=False))
    order = batch_indices(examples.num_rows, micro * w, steps, seed)
    # tokenise the rows this rank will use once, not once per step they appear in
    mine = order[:, r * micro : (r + 1) * micro]
    used = np.unique(mine)
    tokens = tokenize(tokenizer, prompts[used], answers[used])
    where = np.searchsorted(used, mine)
    device = engine.device
    rows: list[dict] = []

    def log_eval(step: int) -> None:
        if evaluate is not None:
            rows.extend({"step": step, "split": "eval", "metric": k, "value": v} for k, v in evaluate().items())

    losses = torch.zeros(steps, dtype=torch.float32, device=device)
    logged = 0

    def log_losses(upto: int) -> None:
        """The mean over ranks of steps [logged, upto): one all-reduce per eval interval, not one per step."""
        nonlocal logged
        chunk = losses[logged:upto].clone()
        if w > 1:
            dist.all_reduce(chunk)
            chunk /= w
        rows.extend(
            {"step": logged + i + 1, "split": "train", "metric": "loss", "value": v}
            for i, v in enumerate(chunk.tolist())
        )
        logged = upto

    log_eval(0)
    engine.train()
    for step in range(steps):
        batch = {
            k: v.to(device) for k, v in pad_tokens(tokens, where[step], tokenizer.pad_token_id, max_length).items()
        }
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        losses[step] = loss.detach().float()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            log_losses(step + 1)
            log_eval(step + 1)
            engine.train()
    return rows
