"""Evaluate a model on named example sets: exact-match accuracy and answer loss, per set and per skill.

One teacher-forced forward pass per batch (all answer tokens argmax-correct equals greedy exact match). The rows of
each set are split over the Train workers with the same number of batches on every rank, so ZeRO-3's collective
forward never waits on a rank that ran out of data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from lhas_ray.model import encode
from lhas_ray.scoring.features import forward_stats
from lhas_ray.training.dist import all_gather_objects, rank, world_size


@dataclass(frozen=True)
class EvalSet:
    """A named set to evaluate on; ``eval_stage`` is the stage whose eval set it is (None for OOD sets)."""

    name: str
    table: pa.Table
    eval_stage: int | None


def per_example(
    model: torch.nn.Module, tokenizer, table: pa.Table, max_length: int, batch_size: int
) -> dict[str, np.ndarray]:
    """Loss and exact match of every row of ``table`` (in row order), computed across all ranks."""
    n, r, w = table.num_rows, rank(), world_size()
    mine = np.array_split(np.arange(n), w)[r]
    n_batches = int(np.ceil(max(len(part) for part in np.array_split(np.arange(n), w)) / batch_size)) if n else 0
    prompts = np.asarray(table.column("prompt").to_numpy(zero_copy_only=False))
    answers = np.asarray(table.column("answer").to_numpy(zero_copy_only=False))
    losses, correct, token_acc = [], [], []
    was_training = model.training
    model.eval()
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        real = len(idx)
        if real == 0:  # keep collective forwards in step (ZeRO-3): run one throwaway row
            idx = np.array([0])
        stats = forward_stats(model, encode(tokenizer, prompts[idx], answers[idx], max_length), want_emb=False)
        losses.append(stats["loss"][:real])
        correct.append(stats["correct"][:real])
        token_acc.append(stats["token_acc"][:real])
    model.train(was_training)
    local = (
        mine,
        np.concatenate(losses) if losses else np.zeros(0, np.float32),
        np.concatenate(correct) if correct else np.zeros(0, bool),
        np.concatenate(token_acc) if token_acc else np.zeros(0, np.float32),
    )
    parts = all_gather_objects(local)
    idx = np.concatenate([p[0] for p in parts])
    out = {"loss": np.empty(n, np.float64), "correct": np.empty(n, bool), "token_acc": np.empty(n, np.float64)}
    for i, key in enumerate(("loss", "correct", "token_acc"), start=1):
        out[key][idx] = np.concatenate([p[i] for p in parts])
    return out


def summarise(name: str, eval_stage: int | None, skills: np.ndarray, loss: np.ndarray, score: np.ndarray) -> list[dict]:
    """Rows (eval_set, eval_stage, skill, metric, value): 'all' plus one per skill, accuracy and loss."""
    rows = []
    uniq, inv = np.unique(skills, return_inverse=True)
    counts = np.bincount(inv, minlength=len(uniq))
    acc = np.bincount(inv, weights=score.astype(np.float64), minlength=len(uniq)) / counts
    mean_loss = np.bincount(inv, weights=loss, minlength=len(uniq)) / counts
    groups = [("all", float(score.mean()), float(loss.mean()))]
    groups += list(zip(uniq.tolist(), acc, mean_loss, strict=True))
    for skill, a, lo in groups:
        rows.append(
            {"eval_set": name, "eval_stage": eval_stage, "skill": skill, "metric": "accuracy", "value": float(a)}
        )
        rows.append({"eval_set": name, "eval_stage": eval_stage, "skill": skill, "metric": "loss", "value": float(lo)})
    return rows


def evaluate_sets(
    model: torch.nn.Module, tokenizer, sets: list[EvalSet], max_length: int, batch_size: int, accuracy: str = "exact"
) -> list[dict]:
    """Accuracy and loss rows for every set, on every rank.

    ``accuracy``: 'exact' (the whole answer, for task stages) or 'token' (next-token accuracy, for text stages).
    """
    key = {"exact": "correct", "token": "token_acc"}[accuracy]
    rows: list[dict] = []
    for s in sets:
        res = per_example(model, tokenizer, s.table, max_length, batch_size)
        skills = np.asarray(s.table.column("skill").to_numpy(zero_copy_only=False))
        rows += summarise(s.name, s.eval_stage, skills, res["loss"], res[key])
    return rows
