"""Cosine nearest neighbours and spherical k-means in blocked torch: never a dense N x N matrix.

Exact kNN (N <= ``exact_limit``) computes one block of rows against the pool at a time and keeps a torch top-k:
O(N^2 d) time, O(N * block) memory. Past the limit an IVF index (Jegou et al. 2011, as in faiss' IndexIVFFlat)
takes over: spherical k-means into C ~ 2 sqrt(N) cells, and each cell's points search the ``nprobe`` cells whose
centroids are nearest their own, O(N * nprobe * N / C * d) time. Row 0 of every neighbour list is the point itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BLOCK_BYTES = 1 << 28  # at most 256 MiB of similarities per block


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32) so a dot product is a cosine; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def _rows_per_block(cols: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(cols, 1)))


def max_similarity(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of x, the largest dot product with a row of y and its index (first on ties); blocked over x."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    best = np.empty(xt.shape[0], dtype=np.float32)
    arg = np.empty(xt.shape[0], dtype=np.int64)
    step = _rows_per_block(yt.shape[0])
    for s in range(0, xt.shape[0], step):
        v, i = (xt[s : s + step] @ yt.T).max(dim=1)
        best[s : s + step], arg[s : s + step] = v.numpy(), i.numpy()
    return best, arg


def kmeans(
    x: np.ndarray, n_clusters: int, *, seed: int = 0, iters: int = 15, sample: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded spherical k-means (cosine) on unit rows: (centroids [C, d] float32, labels [N] int64).

    Lloyd steps run on a seeded sample of at most ``sample`` rows (default 64 per cluster, >= 20,000); then every row
    is assigned to its nearest centroid. O(iters * sample * C * d + N * C * d). Empty cells are re-seeded.
    """
    n = x.shape[0]
    c = min(n_clusters, n)
    rng = np.random.default_rng(seed)
    m = min(n, sample or max(64 * c, 20_000))
    xs = x if m == n else x[np.sort(rng.choice(n, m, replace=False))]
    xs_t = torch.from_numpy(np.ascontiguousarray(xs))
    cent = xs_t[torch.from_numpy(np.sort(rng.choice(m, c, replace=False)))].clone()
    for _ in range(iters):
        _, lab = max_similarity(xs, cent.numpy())
        lab_t = torch.from_numpy(lab)
        sums = torch.zeros_like(cent).index_add_(0, lab_t, xs_t)
        counts = torch.bincount(lab_t, minlength=c)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            sums[empty] = xs_t[torch.from_numpy(rng.choice(m, empty.numel(), replace=False))]
        cent = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cent_np = cent.numpy()
    _, labels = max_similarity(x, cent_np)
    return cent_np, labels


def knn_graph(
    x: np.ndarray, knn: int, *, exact_limit: int = 50_000, seed: int = 0, nprobe: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN of unit rows x: (neighbours int32 [N, K], similarities float32 [N, K]) with K = min(knn, N-1) + 1.

    Column 0 is the point itself (similarity 1); a missing neighbour (a small IVF probe) is -1 with similarity 0.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    kk = min(knn, n - 1) + 1
    nbr = np.full((n, kk), -1, dtype=np.int32)
    sim = np.zeros((n, kk), dtype=np.float32)
    xt = torch.from_numpy(x)
    if n <= exact_limit:
        _search(xt, np.arange(n), np.arange(n), nbr, sim, kk)
    else:
        cells = max(1, round(2 * math.sqrt(n)))
        cent, labels = kmeans(x, cells, seed=seed, iters=10)
        cells = cent.shape[0]
        order = np.argsort(labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=cells))])
        csim = torch.from_numpy(cent) @ torch.from_numpy(cent).T
        csim.fill_diagonal_(math.inf)  # own cell first
        probes = torch.topk(csim, min(nprobe, cells), dim=1).indices.numpy()
        for c in range(cells):
            query = order[bounds[c] : bounds[c + 1]]
            if query.size == 0:
                continue
            cand = np.concatenate([order[bounds[p] : bounds[p + 1]] for p in probes[c]])
            _search(xt, query, cand, nbr, sim, kk)
    sim[:, 0] = 1.0
    return nbr, sim


def _search(xt: torch.Tensor, query: np.ndarray, cand: np.ndarray, nbr: np.ndarray, sim: np.ndarray, kk: int) -> None:
    """Write the top-kk candidates of each query row into nbr/sim; query is a prefix of cand (each row's self first)."""
    cand_t = torch.from_numpy(cand)
    xc = xt if cand.size == xt.shape[0] and np.array_equal(cand, np.arange(cand.size)) else xt[cand_t]
    top = min(kk, cand.size)
    step = _rows_per_block(cand.size)
    for s in range(0, query.size, step):
        q = query[s : s + step]
        scores = xt[torch.from_numpy(q)] @ xc.T
        rows = torch.arange(q.size)
        scores[rows, s + rows] = math.inf
        v, i = torch.topk(scores, top, dim=1)
        nbr[q, :top] = cand[i.numpy()]
        sim[q, :top] = v.numpy()
