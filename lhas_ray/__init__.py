"""lhas_ray: long-horizon data selection for multi-stage LLM fine-tuning, on Ray Data, Ray Train and Ray Tune."""

import os

# Ray Train V2 (TorchTrainer.fit() inside Tune trials) must be chosen before ray.train is first imported; the
# package sets it once, here, for every entry point (the CLI, the Python API, tests, benchmarks).
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
