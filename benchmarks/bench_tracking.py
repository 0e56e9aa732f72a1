"""What experiment tracking adds to a run (issue 15 target: under 5% of a micro run's wall time).

``lhas-ray run`` logs to MLflow and W&B after the run, from the results store, so the time a tracker adds is the
time of those calls, imports included. This script runs the micro protocol once without tracking
(``lhas-ray run`` as a subprocess, the baseline), then, each in a fresh process as the CLI would pay it, logs that
run to a local MLflow file store and to W&B offline, and prints each one's seconds and its ratio to the run's wall time.

    .venv/bin/python benchmarks/bench_tracking.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import micro_config  # noqa: E402

LOG = """
import sys, time
started = time.perf_counter()
from lhas_ray.config import load_config
cfg = load_config(sys.argv[1])
if sys.argv[3] == "mlflow":
    from lhas_ray.config.sections import MLflowConfig
    from lhas_ray.tracking import log_run_to_mlflow
    runs = log_run_to_mlflow(sys.argv[2], cfg, MLflowConfig(tracking_uri="file://" + sys.argv[4]))
else:
    from lhas_ray.config.sections import WandbConfig
    from lhas_ray.tracking_wandb import log_run_to_wandb
    runs = log_run_to_wandb(sys.argv[2], cfg, WandbConfig(mode="offline", dir=sys.argv[4]))
print(len(runs), time.perf_counter() - started)
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of a subprocess and its stdout; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    """The run, then each tracker on it; the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="working folder (default: a fresh temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_tracking-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_SILENT": "true"}
    config = root / "micro.yaml"
    config.write_text(yaml.safe_dump(micro_config()))
    out = root / "run"
    load = os.getloadavg()
    lhas = str(Path(sys.executable).with_name("lhas-ray"))
    run_s, _ = timed([lhas, "run", str(config), "--output", str(out), "--no-report"], env)
    print(f"lhas-ray run (micro, no tracking): {run_s:.1f} s wall; load average before {load[0]:.2f}")
    for tracker in ("mlflow", "wandb"):
        store = root / f"{tracker}-store"
        wall, printed = timed([sys.executable, "-c", LOG, str(config), str(out), tracker, str(store)], env)
        n = printed.split()[0]
        print(f"{tracker}: {n} trajectories logged in {wall:.1f} s (process included): {wall / run_s:.1%} of the run")
    print(f"load average after {os.getloadavg()[0]:.2f} (2 cores: above 1.0 the figures are not from a quiet machine)")


if __name__ == "__main__":
    main()
