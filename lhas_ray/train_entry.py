"""The function Ray Train runs on every worker, in a module that imports nothing.

A ``TorchTrainer`` pickles its training function by reference, so the module that holds it is imported wherever the
trainer is built or unpickled: the driver, and each Tune trial of side-by-side groups. Held here, the protocol's
torch, transformers and DeepSpeed stack is imported only by the workers that run it.
"""

from __future__ import annotations


def trajectory_worker(config: dict) -> None:
    """Every trajectory of one group, stage by stage: ``protocol.trajectory_worker``, imported on the worker."""
    from lhas_ray.protocol import trajectory_worker as run_group

    run_group(config)
