"""Shared fixtures: Ray is started once per session, sized for a 2-core machine."""

from __future__ import annotations

import os

import pytest

import lhas_ray  # noqa: F401  (sets RAY_TRAIN_V2_ENABLED before any test imports ray.train)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        from lhas_ray.local_ray import start_local_ray

        start_local_ray(num_cpus=2, log_to_driver=False)
    yield ray
