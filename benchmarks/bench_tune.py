"""Tuning on 2 cores: Tune's overhead against direct runs, and what ASHA saves (targets: overhead <= 15%; ASHA
cuts training steps by >= 30% with the best objective within the seed-to-seed spread).

overhead: N trials of ``run_sweep`` (FIFO, one at a time) against N direct ``run_experiment`` calls with the same
weights (those the sweep drew), in the same Ray session, direct runs first. The warm-up is off so that sharing the
base checkpoint between trials (a sweep feature) does not hide Tune's own cost.
asha: the same N-trial sweep with ASHA and without (same sampler seed, 5 random start-up trials, then TPE), 5 stages
each by default (the config's ASHA defaults: first rung after 1 stage, a reduction factor of 3 keeps the best third at
each rung); training steps are the committed stages' training and probe steps
(trials.parquet); the seed-to-seed spread is the std over seeds 0..2 of the objective of the FIFO sweep's best
weights (seeds 1 and 2 run directly).

    .venv/bin/python benchmarks/bench_tune.py overhead --trials 4
    .venv/bin/python benchmarks/bench_tune.py asha --trials 8 [--stages 5 --grace-period 1 --reduction-factor 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

from lhas_ray.config import ExperimentConfig, config_from_dict  # noqa: E402
from lhas_ray.launch import run_experiment  # noqa: E402
from lhas_ray.local_ray import start_local_ray  # noqa: E402
from lhas_ray.store import ResultStore  # noqa: E402
from lhas_ray.tuning.configs import trial_config  # noqa: E402
from lhas_ray.tuning.scores import trial_scores  # noqa: E402
from lhas_ray.tuning.space import load_search_space  # noqa: E402
from lhas_ray.tuning.sweep import run_sweep  # noqa: E402

SPACE = "search_spaces/lhas_default.yaml"


def bench_config(trials: int, warmup_steps: int, stages: int = 3, **tune) -> ExperimentConfig:
    """3-5 stages of a 2-layer tiny GPT-2, one Train worker, pools of 512: about 30-60 s a trajectory here."""
    stage = {"budget": 128, "pool": {"size": 512}, "eval_size": 48, "ood_size": 8, "probe_size": 48}
    names = [("rev", "reverse"), ("srt", "sort"), ("cpy", "copy"), ("cnt", "count"), ("add", "add")][:stages]
    return config_from_dict(
        {
            "name": "bench-tune",
            "model": {"name": "tiny-gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "max_length": 24},
            "data": {"seed": 0, "min_len": 2, "max_len": 4},
            "stages": [{"name": n, "targets": [t], **stage} for n, t in names],
            "selectors": [{"name": "lhas"}],
            "seeds": [0],
            "training": {
                "steps": 80,
                "lr": 3e-3,
                "batch_size": 32,
                "num_workers": 1,
                "eval_every": 1000,
                "warmup": {"steps": warmup_steps, "size": 512, "lr": 3e-3},
            },
            "probe": {"steps": 10, "eval_every": 5},
            "scoring": {"batch_size": 128},
            "tune": {"trials": trials, "max_concurrent": 1, "seed": 0, "startup_trials": 4, **tune},
        }
    )


def _params(trials) -> list[dict]:
    cols = [c for c in trials.columns if c.startswith("param_")]
    return [{c.removeprefix("param_"): float(row[c]) for c in cols} for _, row in trials.iterrows()]


def overhead(n: int, work: str) -> None:
    """N sweep trials against N direct runs of the same weights."""
    cfg = bench_config(n, warmup_steps=0, scheduler="fifo", startup_trials=max(n, 4))
    space = load_search_space(SPACE)
    params = _startup_draws(cfg, space, n)
    t0 = time.perf_counter()
    for i, p in enumerate(params):
        run_experiment(trial_config(cfg, p), os.path.join(work, f"direct{i}"))
    direct_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep = run_sweep(cfg, space, os.path.join(work, "sweep"))
    sweep_s = time.perf_counter() - t0
    drawn = _params(sweep.trials)
    same = all(abs(a[k] - b[k]) < 1e-12 for a, b in zip(drawn, params, strict=True) for k in a)
    print(f"\n{n} direct runs (run_experiment, one after another): {direct_s:7.1f} s")
    print(f"{n}-trial sweep (run_sweep, FIFO, one at a time):    {sweep_s:7.1f} s  (same weights: {same})")
    print(f"ratio sweep / direct: {sweep_s / direct_s:.3f}  -> overhead {100 * (sweep_s / direct_s - 1):+.1f}%")
    print(f"target overhead <= 15%: {'met' if sweep_s / direct_s <= 1.15 else 'NOT met'}")


def _startup_draws(cfg: ExperimentConfig, space, n: int) -> list[dict]:
    """The weights the sweep's first n trials draw: TPE's seeded random start-up (n <= tune.startup_trials)."""
    import optuna

    assert n <= cfg.tune.startup_trials, "the direct runs can only know the sweep's random start-up draws"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.seed, n_startup_trials=cfg.tune.startup_trials)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    draws = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=space.distributions())
        draws.append(dict(trial.params))
        study.tell(trial, 0.0)
    return draws


def asha(n: int, work: str, stages: int, reduction_factor: float, grace_period: int) -> None:
    """The same sweep with ASHA and with FIFO: training steps, best objective, seed-to-seed spread."""
    space = load_search_space(SPACE)
    results = {}
    print(f"{n} trials, {stages} stages, ASHA reduction_factor {reduction_factor}, grace_period {grace_period} stages")
    for scheduler in ("fifo", "asha"):
        tune = {
            "scheduler": scheduler,
            "reduction_factor": reduction_factor,
            "grace_period": grace_period,
            "startup_trials": 5,
        }
        cfg = bench_config(n, warmup_steps=150, stages=stages, **tune)
        t0 = time.perf_counter()
        res = run_sweep(cfg, space, os.path.join(work, scheduler))
        results[scheduler] = (res, time.perf_counter() - t0, cfg)
    fifo, asha_ = results["fifo"][0], results["asha"][0]
    cfg = results["fifo"][2]
    best = fifo.best
    scores = [float(best["objective"])]
    for seed in (1, 2):
        tcfg = trial_config(cfg.model_copy(update={"seeds": [seed]}), _params(fifo.trials.loc[[best.name]])[0])
        out = os.path.join(work, f"spread{seed}")
        run_experiment(tcfg, out)
        scores.append(trial_scores(ResultStore(out), tcfg)["objective"])
    spread = statistics.stdev(scores)
    steps = {k: int(r[0].trials["training_steps"].sum()) for k, r in results.items()}
    print()
    for k, (res, secs, _) in results.items():
        counts = res.trials["status"].value_counts().to_dict()
        print(
            f"{k:5s}: {secs:6.1f} s, training steps {steps[k]:6d}, best objective {res.best['objective']:.4f}, {counts}"
        )
    cut = 1 - steps["asha"] / steps["fifo"]
    gap = abs(float(asha_.best["objective"]) - float(best["objective"]))
    print(f"ASHA cuts training steps by {100 * cut:.1f}% (target >= 30%: {'met' if cut >= 0.3 else 'NOT met'})")
    span = max(scores) - min(scores)
    print(f"objective of the FIFO-best weights over seeds 0, 1, 2: {[round(s, 4) for s in scores]}")
    print(f"  seed-to-seed spread: std {spread:.4f}, range {span:.4f}")
    print(
        f"|best ASHA - best FIFO| = {gap:.4f} (within one std: {'yes' if gap <= spread else 'NO'}; "
        f"within the range: {'yes' if gap <= span else 'NO'})"
    )


def main() -> None:
    """Run one part of the benchmark in a local Ray sized to this machine."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["overhead", "asha"])
    p.add_argument("--trials", type=int, default=None, help="trials per sweep (overhead: 4, asha: 8)")
    p.add_argument("--stages", type=int, default=5, choices=[3, 4, 5], help="asha: stages per trajectory")
    p.add_argument("--grace-period", type=int, default=1, help="asha: stages before ASHA may stop a trial")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="asha: ASHA's reduction factor")
    p.add_argument("--keep", help="write the sweeps into this (new) folder and keep them; default: a temporary one")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start_local_ray(log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = args.keep or tmp
        if args.part == "overhead":
            overhead(args.trials or 4, work)
        else:
            asha(args.trials or 8, work, args.stages, args.reduction_factor, args.grace_period)


if __name__ == "__main__":
    main()
