"""General ability with lm-evaluation-harness: named lm-eval tasks run on a model, returned as metrics rows.

``TorchLM`` is an lm-eval ``LM`` over our model and tokenizer (the tiny character-level GPT-2 included):
loglikelihoods come from batched teacher-forced forward passes, and greedy generation runs a fixed number of steps.
lm-eval sees one process; the requests are split over the Train ranks inside with the same number of batches on every
rank (ZeRO-3's collective forward never waits on a rank that ran out) and gathered back, so every rank returns the
same rows. Each top-level task or group becomes the eval set ``lm_eval/<name>``. Needs the extra ``lmeval``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lm_eval.api.model import LM
from lm_eval.defaults import DEFAULT_OTHER_SEED
from lm_eval.evaluator import evaluate
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lhas_ray.evaluation.definitions import LM_EVAL_PREFIX
from lhas_ray.training.dist import all_gather_objects, rank, world_size

if TYPE_CHECKING:
    from lhas_ray.config.lmeval import LMEvalConfig

PRIMARY = ("acc", "exact_match")  # the lm-eval metric also written as 'accuracy': the first one a task reports


def task_manager(lm_cfg: LMEvalConfig) -> TaskManager:
    """lm-eval's task index over include_path (and lm-eval's own tasks when include_defaults)."""
    return TaskManager(include_path=lm_cfg.include_path, include_defaults=lm_cfg.include_defaults)


def task_problems(lm_cfg: LMEvalConfig, where: str = "evaluation.lm_eval") -> list[str]:
    """A missing include_path folder, or task names the index does not hold (with the nearest names)."""
    if lm_cfg.include_path is not None and not os.path.isdir(os.path.expanduser(lm_cfg.include_path)):
        return [f"{where}.include_path: {lm_cfg.include_path!r} is not a folder"]
    known = task_manager(lm_cfg).all_tasks
    where_looked = [f"include_path {lm_cfg.include_path!r}"] if lm_cfg.include_path is not None else []
    where_looked += ["lm-eval's own tasks"] if lm_cfg.include_defaults else []
    searched = " and ".join(where_looked)
    problems = []
    for i, name in enumerate(lm_cfg.tasks):
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3)
            hint = f" (closest: {near})" if near else ""
            problems.append(f"{where}.tasks.{i}: task {name!r} is not in {searched or 'any index'}{hint}")
    return problems


class TorchLM(LM):
    """loglikelihood, loglikelihood_rolling and generate_until over ``model`` in batches, split over the ranks."""

    def __init__(self, model, tokenizer, max_length: int, batch_size: int, max_gen_toks: int = 64):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.max_gen_toks = max_length, batch_size, max_gen_toks
        # what an empty context becomes, as lm-eval's HFLM chooses it: BOS where the tokenizer has one, else EOS
        self.prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    # ---- lm-eval's three request types ----
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(log p(continuation | context), continuation is greedy) per request."""
        return self.score_pairs(self.encode_pairs([r.args for r in requests]))

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Log-likelihood of each whole string over lm-eval's rolling max_length windows (first: the prefix token)."""
        docs = self.encode([r.args[0] for r in requests])
        windows = [
            [make_disjoint_window(w) for w in get_rolling_token_windows(d, self.prefix_token_id, self.max_length, 1)]
            for d in docs
        ]
        owner = np.repeat(np.arange(len(docs)), [len(w) for w in windows])
        scores = self.score_pairs(list(chain.from_iterable(windows)))
        ll = np.array([s[0] for s in scores], dtype=np.float64)
        return np.bincount(owner, weights=ll, minlength=len(docs)).tolist()

    def generate_until(self, requests) -> list[str]:
        """Greedy continuations, cut at the first stop string (``until`` and EOS); sampling settings are ignored."""
        kwargs = [dict(r.args[1] or {}) for r in requests]
        steps = min(max(int(k.get("max_gen_toks", self.max_gen_toks)) for k in kwargs), self.max_length - 1)
        texts = self.generate(self.encode([r.args[0] for r in requests]), steps)
        out = []
        for text, k in zip(texts, kwargs, strict=True):
            until = k.get("until") or []
            for stop in [*([until] if isinstance(until, str) else until), self.tokenizer.eos_token]:
                if stop:
                    text = text.split(stop)[0]
            out.append(text)
        return out

    # ---- tokens ----
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def encode_pairs(self, args: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """lm-eval's split: trailing spaces of the context go to the continuation, the whole is encoded once and cut
        at the context's length; an empty context becomes the prefix token."""
        ctx = [c.rstrip() for c, _ in args]
        whole = self.encode([c + cont for (c, cont) in args])
        ctx_ids = self.encode(ctx)
        return [(c, w[len(c) :]) if c else ([self.prefix_token_id], w) for c, w in zip(ctx_ids, whole, strict=True)]

    # ---- batched forward passes, split over the ranks ----
    def score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        lengths = np.array([len(c) + len(t) for c, t in pairs], dtype=np.int64)
        return on_ranks(pairs, lengths, self.batch_size, self.score_batch)

    def score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One forward pass: the last max_length + 1 tokens of context + continuation, scored on the continuation."""
        seqs = [(c + t)[-(self.max_length + 1) :] for c, t in pairs]
        n_cont = np.array([min(len(t), len(s) - 1) for (_, t), s in zip(pairs, seqs, strict=True)])
        ids, lengths = pad(seqs, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        ids = torch.from_numpy(ids).to(device)
        pos = torch.arange(ids.shape[1] - 1, device=device)[None, :]
        n_in = torch.from_numpy(lengths - 1).to(device)[:, None]
        scored = (pos < n_in) & (pos >= n_in - torch.from_numpy(n_cont).to(device)[:, None])
        with torch.no_grad():
            logits = self.model(input_ids=ids[:, :-1], attention_mask=(pos < n_in).long()).logits
        target = ids[:, 1:][scored]
        picked = logits[scored].float()
        token_ll = picked.log_softmax(-1).gather(1, target[:, None]).squeeze(1)
        miss = (picked.argmax(-1) != target).to(torch.float64)
        row = scored.nonzero()[:, 0]
        ll = torch.zeros(len(seqs), dtype=torch.float64, device=device).index_add_(0, row, token_ll.double())
        misses = torch.zeros(len(seqs), dtype=torch.float64, device=device).index_add_(0, row, miss)
        return list(zip(ll.cpu().tolist(), (misses == 0).cpu().tolist(), strict=True))

    def generate(self, contexts: list[list[int]], steps: int) -> list[str]:
        lengths = np.array([len(c) for c in contexts], dtype=np.int64)
        return on_ranks(contexts, lengths, self.batch_size, lambda b: self.generate_batch(b, steps))

    def generate_batch(self, contexts: list[list[int]], steps: int) -> list[str]:
        """Exactly ``steps`` greedy tokens per row (the same on every rank), contexts cut from the left to fit."""
        keep = max(self.max_length - steps, 1)
        ids, lengths = pad([c[-keep:] or [self.prefix_token_id] for c in contexts], self.tokenizer.pad_token_id, steps)
        device = next(self.model.parameters()).device
        ids, ends = torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)
        rows = torch.arange(len(contexts), device=device)
        with torch.no_grad():
            for _ in range(steps):  # right padding: row i's next token is read at its own last position
                width = int(ends.max())
                att = (torch.arange(width, device=device)[None, :] < ends[:, None]).long()
                logits = self.model(input_ids=ids[:, :width], attention_mask=att).logits
                ids[rows, ends] = logits[rows, ends - 1].argmax(-1)
                ends = ends + 1
        start = torch.from_numpy(lengths).to(device)[:, None]
        return self.tokenizer.batch_decode(ids.gather(1, start + torch.arange(steps, device=device)[None, :]).tolist())


def pad(rows: Sequence[Sequence[int]], pad_id: int | None, extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [n, longest + extra] token matrix and each row's length, scattered without a loop over rows."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    ids = np.full((len(rows), max(int(lengths.max(initial=0)), 1) + extra), pad_id or 0, dtype=np.int64)
    row = np.repeat(np.arange(len(rows)), lengths)
    col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids[row, col] = flat
    return ids, lengths


def on_ranks(items: list, lengths: np.ndarray, batch_size: int, run: Callable[[list], list]) -> list:
    """``run`` over ``items`` in batches of similar length, the items dealt over the Train ranks (same number of
    batches on each: a rank that ran out runs one throwaway item), every result back in item order on every rank."""
    n, r, w = len(items), rank(), world_size()
    order = np.argsort(-lengths, kind="stable")
    mine = order[r::w]
    n_batches = -(-len(order[0::w]) // batch_size) if n else 0
    results: list = []
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        out = run([items[i] for i in (idx if len(idx) else order[:1])])
        results += out[: len(idx)]
    gathered = all_gather_objects((mine, results))
    merged: list[Any] = [None] * n
    for idx, res in gathered:
        for i, value in zip(idx.tolist(), res, strict=True):
            merged[i] = value
    return merged


def result_rows(results: dict) -> list[dict]:
    """metrics rows of lm-eval's results: one eval set per top-level task or group (a tag's tasks each their own),
    every numeric metric under lm-eval's name (``name,filter`` unless the filter is 'none'), plus 'accuracy'."""
    children = set(chain.from_iterable(results.get("group_subtasks", {}).values()))
    rows = []
    for name, values in results["results"].items():
        if name in children:
            continue
        metrics: dict[str, float] = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, int | float) or not filt:
                continue
            metrics[metric if filt == "none" else key] = float(value)
        primary = next((v for m in PRIMARY for k, v in metrics.items() if k.partition(",")[0] == m), None)
        if primary is not None:
            metrics = {"accuracy": primary, **metrics}
        rows += [
            {"eval_set": LM_EVAL_PREFIX + name, "eval_stage": None, "skill": "all", "metric": m, "value": v}
            for m, v in metrics.items()
        ]
    return rows


def load_tasks(lm_cfg: LMEvalConfig, manager: TaskManager) -> dict:
    """The named tasks, loaded and set up as ``simple_evaluate`` sets them (few-shot count and seed)."""
    loaded = manager.load(list(lm_cfg.tasks))
    for task in loaded["tasks"].values():
        own = task.get_config("num_fewshot")
        if lm_cfg.num_fewshot is not None and own != 0:  # a task that fixes 0 shots keeps it, as in lm-eval
            task.set_config(key="num_fewshot", value=lm_cfg.num_fewshot)
        elif own is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return loaded


def evaluate_lm_tasks(model: torch.nn.Module, tokenizer, lm_cfg: LMEvalConfig, manager, max_length: int) -> list[dict]:
    """The rows of ``lm_cfg.tasks`` on ``model``, on every rank (all ranks must call it), without reseeding the global
    generators. ``manager``: a ``task_manager(lm_cfg)``, built once per process (indexing tasks takes seconds).

    lm-eval's ``evaluate`` rather than ``simple_evaluate``: the latter also collects environment info through
    subprocesses (pip, nvidia-smi), seconds per call for nothing we keep, and reseeds the global generators."""
    lm = TorchLM(model, tokenizer, lm_cfg.max_length or max_length, lm_cfg.batch_size, lm_cfg.max_gen_toks)
    was_training = model.training
    model.eval()
    try:
        results = evaluate(
            lm=lm, task_dict=load_tasks(lm_cfg, manager), limit=lm_cfg.limit, bootstrap_iters=0, log_samples=False
        )
    finally:
        model.train(was_training)
    return result_rows(results)
