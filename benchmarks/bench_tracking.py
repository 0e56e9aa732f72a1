"""What experiment tracking adds to a run (issue 15 target: under 5% of a micro run's wall time).

Runs ``lhas-ray run`` on the micro protocol, each as a fresh process as a user would: without tracking (the
baseline), with MLflow (a local file store) and with W&B (offline), interleaved ``--repeats`` times so that drift in
the machine's load falls on every variant alike. Prints each variant's mean wall time, its ratio to the baseline,
and the seconds the CLI itself reports for the tracker's logging at the end (the trackers are imported while the run
trains, so that figure is the calls alone).

    .venv/bin/python benchmarks/bench_tracking.py [--repeats 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import micro_config  # noqa: E402


def tracking_section(variant: str, root: Path) -> dict:
    """The config's ``tracking`` block for one variant."""
    if variant == "mlflow":
        return {"mlflow": {"tracking_uri": f"file://{root / 'mlflow-store'}"}}
    if variant == "wandb":
        return {"wandb": {"mode": "offline", "dir": str(root / "wandb-store")}}
    return {}


def timed_run(lhas: str, config: Path, out: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one ``lhas-ray run`` and its stdout; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run([lhas, "run", str(config), "--output", str(out), "--no-report"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    if done.returncode:
        sys.exit(f"lhas-ray run {config.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    """Interleaved runs of each variant; the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, interleaved (default 2)")
    parser.add_argument("--out", default=None, help="working folder (default: a fresh temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_tracking-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_SILENT": "true"}
    lhas = str(Path(sys.executable).with_name("lhas-ray"))
    variants = ("none", "mlflow", "wandb")
    configs = {}
    for variant in variants:
        configs[variant] = root / f"micro-{variant}.yaml"
        configs[variant].write_text(yaml.safe_dump({**micro_config(), "tracking": tracking_section(variant, root)}))
    walls: dict[str, list[float]] = {v: [] for v in variants}
    logged: dict[str, list[float]] = {v: [] for v in variants}
    load = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for variant in variants:
            wall, printed = timed_run(lhas, configs[variant], root / f"run-{variant}-{repeat}", env)
            walls[variant].append(wall)
            found = re.search(rf"^{variant}: \d+ trajectories .*?([\d.]+)s\)$", printed, re.M)
            if variant != "none":
                if not found:
                    sys.exit(f"{variant}: the run did not report logging:\n{printed[-2000:]}")
                logged[variant].append(float(found.group(1)))
            print(f"repeat {repeat}: {variant:6s} {wall:6.1f} s", flush=True)
    base = statistics.mean(walls["none"])
    print(f"\nlhas-ray run (micro, {args.repeats} runs each, interleaved); load average before {load:.2f}")
    print(f"no tracking: {base:.1f} s mean wall ({', '.join(f'{w:.1f}' for w in walls['none'])})")
    for variant in variants[1:]:
        mean = statistics.mean(walls[variant])
        calls = statistics.mean(logged[variant])
        print(
            f"{variant}: {mean:.1f} s mean wall, {mean / base - 1:+.1%} against no tracking; "
            f"its logging at the end {calls:.1f} s ({calls / base:.1%} of the baseline run)"
        )
    print(f"load average after {os.getloadavg()[0]:.2f} (2 cores: above 1.0 the figures are not from a quiet machine)")


if __name__ == "__main__":
    main()
