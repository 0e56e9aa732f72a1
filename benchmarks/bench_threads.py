"""A training step of the demo's tiny model on 1 and on 2 torch threads, alone and beside a little other CPU load.

Why the layouts differ under Ray: a Train worker shares the machine with Ray's own processes (GCS, raylet,
dashboard, Train controllers), which take a fraction of a core in short bursts. A 2-thread step waits at every
parallel op for the thread that was descheduled, so it loses far more than that fraction; a 1-thread step loses
only it. The background here is ``--background`` cores of busy-then-sleep processes (2 ms busy per 10 ms each).
Each case is the mean step of the plain loop (forward, backward, AdamW) over ``--steps`` steps on the demo's stage-1
rows, in this process, after 20 untimed steps.

    .venv/bin/python benchmarks/bench_threads.py [--steps 200] [--background 0.4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from lhas_ray.config import load_config
from lhas_ray.model import build_model, pad_tokens, tokenize
from lhas_ray.tasks.suite import build_suite
from lhas_ray.training.stage import batch_indices

BUSY_S, PERIOD_S = 0.002, 0.010
SPINNER = (
    "import time\n"
    "while True:\n"
    "    t = time.perf_counter()\n"
    f"    while time.perf_counter() - t < {BUSY_S}: pass\n"
    f"    time.sleep({PERIOD_S - BUSY_S})\n"
)


def step_ms(cfg, rows, threads: int, steps: int) -> float:
    """Mean milliseconds per training step of the demo model on ``threads`` torch threads (a fresh model each call)."""
    torch.set_num_threads(threads)
    model, tok = build_model(cfg.model, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.lr)
    tokens = tokenize(tok, rows.column("prompt").to_pylist(), rows.column("answer").to_pylist())
    order = batch_indices(rows.num_rows, cfg.training.batch_size, steps + 20, seed=0)

    def run(first: int, last: int) -> None:
        for s in range(first, last):
            loss = model(**pad_tokens(tokens, order[s], tok.pad_token_id, cfg.model.max_length)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    run(0, 20)
    start = time.perf_counter()
    run(20, steps + 20)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--background", type=float, default=0.4, help="cores of other load beside the loop")
    args = p.parse_args()
    spinners = round(args.background * PERIOD_S / BUSY_S)
    cfg = load_config("demo", [])
    rows = build_suite(cfg, 0).stages[0].pool.slice(0, 400)  # built once: every case trains on the same rows
    results = {}
    for load in (0, spinners):
        procs = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(load)]
        try:
            for threads in (1, 2):
                results[threads, load] = step_ms(cfg, rows, threads, args.steps)
        finally:
            for proc in procs:
                proc.kill()
    other = f"beside {spinners * BUSY_S / PERIOD_S:.1f} cores of other load"
    print(f"bench_threads: demo model, {args.steps} steps a case (ms a step)")
    print(f"{'':<12}{'alone':>10}{other:>40}")
    for threads in (1, 2):
        print(
            f"{threads} thread{'s' if threads > 1 else ' ':<5}{results[threads, 0]:>10.1f}{results[threads, spinners]:>40.1f}"
        )
    print(
        f"2 threads / 1 thread: alone {results[2, 0] / results[1, 0]:.2f}, "
        f"{other} {results[2, spinners] / results[1, spinners]:.2f}"
    )


if __name__ == "__main__":
    main()
