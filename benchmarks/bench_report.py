"""How long the report takes for 10 selectors x 5 seeds x 5 stages (target: under 30 s on 2 cores).

The baseline, measured in the same run, is reading the three committed tables alone (the floor any report pays);
the ratio says how much the metrics, rank analysis, figures and HTML add on top of it.

    .venv/bin/python benchmarks/bench_report.py [--selectors 10 --seeds 5 --stages 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from synthetic_run import build_synthetic_run  # noqa: E402

from lhas_ray.evaluation.metrics import read_long_tables, trajectory_metrics  # noqa: E402
from lhas_ray.evaluation.ranking import rank_analysis  # noqa: E402
from lhas_ray.report import write_report  # noqa: E402
from lhas_ray.store import ResultStore  # noqa: E402

NAMES = ("random", "loss", "rds", "less", "lhas", "kcenter", "facility", "grand", "quality", "deita")


def main() -> None:
    """Build the synthetic run, then time reading it, computing its metrics and writing its report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--selectors", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--stages", type=int, default=5)
    args = p.parse_args()
    selectors = [NAMES[i] if i < len(NAMES) else f"sel{i}" for i in range(args.selectors)]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        build_synthetic_run(out, selectors=selectors, seeds=range(args.seeds), n_stages=args.stages, probe_steps=20)
        build_s = time.perf_counter() - t0
        n_units = args.selectors * args.seeds * (args.stages + 1)

        t0 = time.perf_counter()
        metrics, curves, timings = read_long_tables(ResultStore(out))
        read_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        traj = trajectory_metrics(metrics, curves, lca_beta=5, censor_at=21)  # probe_steps=20 -> censored at 21
        rank_analysis(traj)
        compute_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        write_report(out)
        report_s = time.perf_counter() - t0
        html_mb = os.path.getsize(os.path.join(out, "report.html")) / 2**20

    print(f"run: {args.selectors} selectors x {args.seeds} seeds x {args.stages} stages = {n_units} committed units")
    print(f"  rows: metrics {len(metrics)}, curves {len(curves)}, timings {len(timings)}; built in {build_s:.1f} s")
    print(f"baseline  read the 3 tables:              {read_s:6.2f} s")
    print(f"          trajectory metrics + ranking:   {compute_s:6.2f} s (exact sign-flip tests)")
    print(f"write_report (all of it, incl. reading):  {report_s:6.2f} s  (report.html {html_mb:.1f} MiB)")
    print(f"ratio write_report / read tables:         {report_s / read_s:6.1f}x")
    print(f"target < 30 s: {'met' if report_s < 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
