"""Score example batches with a model: the features each selector asks for, as a pyarrow table keyed by example_id."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import torch

from lhas_ray.model import encode
from lhas_ray.scoring.features import AdamMoments, forward_stats, gradient_features, select_grad_params
from lhas_ray.scoring.per_example import Unsupported
from lhas_ray.scoring.projection import GradientProjector, Projection

# feature columns a scorer can produce; "quality" comes from the reference (base) model, the rest from the current one
SCORABLE = frozenset({"loss", "el2n", "emb", "grad", "grad_norm", "quality"})


class Scorer:
    """Holds a model (and optionally a reference model) and turns example batches into feature columns.

    ``precondition``: saved Adam moments; per-example gradients then become LESS's Adam features before projection.
    ``projection``: 'kronecker' (default) or 'dense' (``scoring/projection.py``). ``grad_method``: 'auto' takes the
    one-backward path, checked against autograd on the first batch, and vmap where it does not cover the
    parameters; 'batched' or 'vmap' force one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        want: set[str] | frozenset[str],
        *,
        max_length: int,
        grad_dim: int = 64,
        grad_params: list[str] | None = None,
        projection_seed: int = 0,
        reference: torch.nn.Module | None = None,
        precondition: AdamMoments | None = None,
        projection: Projection = "kronecker",
        grad_method: str = "auto",
    ):
        unknown = set(want) - SCORABLE
        if unknown:
            raise ValueError(f"cannot score feature(s) {sorted(unknown)}; scorable: {sorted(SCORABLE)}")
        if "quality" in want and reference is None:
            raise ValueError("feature 'quality' needs a reference model (the base checkpoint)")
        self.model, self.tokenizer, self.want, self.max_length = model, tokenizer, frozenset(want), max_length
        self.reference, self.precondition, self.grad_method = reference, precondition, grad_method
        self.params = self.projector = None
        if self.want & {"grad", "grad_norm"}:
            self.params = select_grad_params(model, grad_params or ["last_block", "lm_head"])
            shapes = {n: p.shape for n, p in self.params.items()}
            self.projector = GradientProjector(shapes, grad_dim, projection_seed, kind=projection)

    def score(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """Feature columns (numpy) for one batch, plus ``example_id``."""
        prompts = np.asarray(batch.column("prompt").to_numpy(zero_copy_only=False))
        answers = np.asarray(batch.column("answer").to_numpy(zero_copy_only=False))
        enc = encode(self.tokenizer, prompts, answers, self.max_length)
        out: dict[str, np.ndarray] = {"example_id": batch.column("example_id").to_numpy()}
        if self.want & {"loss", "el2n", "emb"}:
            stats = forward_stats(self.model, enc, want_emb="emb" in self.want)
            out.update({k: stats[k] for k in ("loss", "el2n", "emb") if k in self.want})
        if self.params is not None:
            out["grad"], out["grad_norm"] = self._gradient_features(enc)
            out = {k: v for k, v in out.items() if k in self.want or k == "example_id"}
        if "quality" in self.want:  # higher is better: minus the answer loss under the reference model
            out["quality"] = -forward_stats(self.reference, enc, want_emb=False)["loss"]
        return out

    def _gradient_features(self, enc: dict) -> tuple[np.ndarray, np.ndarray]:
        """Projected gradients and norms; on 'auto', the first batch settles which path the rest take."""
        args = (self.model, self.params, enc, self.projector, self.precondition)
        if self.grad_method != "auto":
            return gradient_features(*args, method=self.grad_method)
        try:
            feats = gradient_features(*args, method="batched", verify=True)
            self.grad_method = "batched"
        except Unsupported as e:
            warnings.warn(f"per-example gradients through vmap (slower): {e}", stacklevel=2)
            self.grad_method = "vmap"
            feats = gradient_features(*args, method="vmap")
        return feats

    def score_batches(self, batches: Iterable[pa.Table]) -> pa.Table:
        """Score every batch and concatenate, sorted by example_id so row order never depends on block order."""
        cols: list[dict[str, np.ndarray]] = [self.score(b) for b in batches]
        return features_table(cols)


def features_table(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """Concatenate feature dicts into one table sorted by example_id; vectors become fixed-size float32 lists."""
    if not parts:
        return pa.table({"example_id": pa.array([], pa.int64())})
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["example_id"], kind="stable")
    arrays = {}
    for k, v in merged.items():
        v = v[order]
        if v.ndim == 2:
            arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float32).ravel()), v.shape[1])
        elif k == "example_id":
            arrays[k] = pa.array(v.astype(np.int64))
        else:
            arrays[k] = pa.array(v.astype(np.float32))
    return pa.table(arrays)
