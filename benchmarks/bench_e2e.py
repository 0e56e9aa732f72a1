"""The whole run: ``lhas-ray run`` against a plain single-process PyTorch implementation of the same protocol.

Both sides run one config (built here and checked with ``config_from_dict``): the built-in tiny GPT-2 and suite,
3 stages, pools of 2,000, budgets of 400, ``--steps`` a stage (x ``--scale``), a 1,000-step warm-up, 60-step probes,
2 selectors, 1 seed, no OOD sets. The plain side is written here: one process, ``torch`` threads = the machine's
cores, no Ray, DeepSpeed, subprocess or parquet store; it reuses the product's pure functions (the suite, the model
factory, ``tokenize`` and ``pad_tokens`` (rows tokenised once per stage, as in the product), the ``Scorer``, the selectors, the batch order and LR schedule, ``evaluate_sets``), so what
differs is orchestration: Ray and Train start-up, Ray Data shards, DeepSpeed engines, checkpoints through the store.
The Ray side is ``lhas-ray run --no-report`` as a subprocess on a YAML written here (process start-up counts, as for
a user), timed by wall clock; its per-phase seconds come from the run's own ``timings.parquet``.

    .venv/bin/python benchmarks/bench_e2e.py                 # the issue-14 size (target: ratio <= 1.5)
    .venv/bin/python benchmarks/bench_e2e.py --scale 10      # stages 10x longer (target: ratio <= 1.2)
    .venv/bin/python benchmarks/bench_e2e.py --quick --steps 20   # a correctness check in a couple of minutes

Plain start-up is the import time of this script (torch, transformers, lhas_ray: ``lhas_ray.selection`` imports the
``ray`` module too); the suite build falls outside the phases on both sides. On a loaded machine more than one torch
thread can make the plain loop many times slower (its threads wait on each other while descheduled; the Train
workers run one thread each): ``--threads 1`` shows it, and the load averages are printed beside the figures.
"""

from __future__ import annotations

import time

IMPORTS_STARTED = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

import lhas_ray  # noqa: E402, F401  (sets RAY_TRAIN_V2_ENABLED, as every entry point does)
from lhas_ray.config import ExperimentConfig, config_from_dict, dump_config  # noqa: E402
from lhas_ray.evaluation.accuracy import EvalSet, evaluate_sets  # noqa: E402
from lhas_ray.evaluation.metrics import mean_accuracy_matrices  # noqa: E402
from lhas_ray.model import build_model, pad_tokens, tokenize, with_adapters  # noqa: E402
from lhas_ray.progress import Timer  # noqa: E402
from lhas_ray.scoring.score import Scorer  # noqa: E402
from lhas_ray.selection import SelectionContext, get_selector  # noqa: E402
from lhas_ray.store import ResultStore  # noqa: E402
from lhas_ray.tasks.suite import StageSets, Suite, build_suite  # noqa: E402
from lhas_ray.training.engine import lr_lambda  # noqa: E402
from lhas_ray.training.stage import batch_indices  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - IMPORTS_STARTED

# the breakdown's rows: (label, phases of the plain side, phases of timings.parquet)
ROWS = [
    ("start-up", ["start-up"], ["ray_start", "worker_start"]),
    ("warm-up", ["warmup"], ["warmup"]),
    ("scoring", ["scoring"], ["scoring"]),
    ("selection", ["selection"], ["selection"]),
    ("training", ["training"], ["training"]),
    ("checkpoint", ["checkpoint"], ["checkpoint"]),
    ("evaluation", ["evaluation"], ["evaluation"]),
    ("probes", ["probe"], ["probe"]),
]
TARGETS = {1: 1.5, 10: 1.2}  # issue 14: the ratio at the base size, and with stages 10x longer


# --- the config --------------------------------------------------------------------------------------------


def bench_config(
    steps: int, selectors: list[str], quick: bool, workers: int = 1, cpus_per_worker: float = 2, groups: int = 1
) -> ExperimentConfig:
    """The issue-14 config (``--quick``: pools, sets, warm-up and probes shrunk for a correctness check); ``groups``
    trajectory groups side by side of ``workers`` x ``cpus_per_worker`` each is the layout of the lhas-ray side (the
    plain side is one process either way)."""
    pool = {"size": 200 if quick else 2000, "target_share": 0.3, "related_share": 0.4, "noise": 0.1}
    sizes = {"eval_size": 32, "probe_size": 32} if quick else {}
    stage = {"budget": 64 if quick else 400, "pool": pool, "ood": [], **sizes}
    raw = {
        "name": "bench_e2e",
        "model": {"name": "tiny-gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "max_length": 32},
        "data": {"seed": 0, "min_len": 2, "max_len": 5},
        "stages": [{"name": s, "targets": [s], **stage} for s in ("reverse", "sort_reverse", "sort")],
        "selectors": [{"name": name} for name in selectors],
        "seeds": [0],
        "ray": {"concurrent_trajectories": groups},
        "training": {
            "steps": steps,
            "lr": 3e-3,
            "batch_size": 32,
            "num_workers": workers,
            "cpus_per_worker": cpus_per_worker,
            "eval_every": 10 if quick else 25,
            "warmup": {"steps": 20 if quick else 1000, "size": 200 if quick else 2000, "lr": 3e-3},
        },
        "probe": {"steps": 6 if quick else 60, "lr": 3e-3, "eval_every": 3 if quick else 5},
        "scoring": {"batch_size": 256},
        "evaluation": {"batch_size": 256, **({"general_size": 8} if quick else {})},
    }
    cfg = config_from_dict(raw, source="bench_e2e")
    check_selectors(cfg)
    return cfg


def check_selectors(cfg: ExperimentConfig) -> None:
    """The plain side scores pool features only: refuse selectors that need a selection context or Adam moments."""
    for s in cfg.selectors:
        sel = get_selector(s.name, **s.params)
        if sel.context_fields:
            raise SystemExit(f"bench_e2e: selector {s.name!r} needs a selection context {sorted(sel.context_fields)}")


def cores() -> int:
    """CPUs this process may use."""
    return len(os.sched_getaffinity(0))


# --- the plain side: one process, plain torch -----------------------------------------------------------------


def column(table: pa.Table, name: str) -> np.ndarray:
    """A string or id column as numpy (fancy-indexable)."""
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


def train_loop(model, tok, examples: pa.Table, cfg: ExperimentConfig, *, steps, lr, seed, eval_every, evaluate=None):
    """AdamW with the product's schedule, batch order and clipping; ``evaluate()`` at 0, every eval_every, the end."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.training.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps))
    prompts, answers = column(examples, "prompt"), column(examples, "answer")
    order = batch_indices(examples.num_rows, cfg.training.batch_size, steps, seed)
    tokens = tokenize(tok, prompts, answers)  # once per stage, as the product's train_steps does
    losses = []
    if evaluate is not None:
        evaluate()
    model.train()
    for step, idx in enumerate(order, start=1):
        loss = model(**pad_tokens(tokens, idx, tok.pad_token_id, cfg.model.max_length)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if evaluate is not None and (step % eval_every == 0 or step == steps):
            evaluate()
            model.train()
    return losses


def judge(model, tok, sets: list[EvalSet], cfg: ExperimentConfig) -> list[dict]:
    """Accuracy and loss rows of every set (the product's ``evaluate_sets``, one process)."""
    ev = cfg.evaluation
    return evaluate_sets(model, tok, sets, cfg.model.max_length, ev.batch_size, ev.accuracy)


def judged_sets(suite: Suite) -> list[EvalSet]:
    """What each checkpoint is judged on: every stage's eval set and the general set (no OOD sets here)."""
    sets = [EvalSet(f"eval/stage{s.index}", s.eval, s.index) for s in suite.stages]
    return sets + ([EvalSet("general", suite.general, None)] if suite.general.num_rows else [])


def warm_up(cfg: ExperimentConfig, suite: Suite, seed: int, timer: Timer):
    """Stage 0: the seed's base model after the broad warm-up."""
    model, tok = build_model(cfg.model, seed)
    model = with_adapters(model, cfg.model)
    warm = cfg.training.warmup
    if warm.steps:
        with timer("warmup"):
            train_loop(model, tok, suite.warmup, cfg, steps=warm.steps, lr=warm.lr, seed=seed, eval_every=warm.steps)
    return model, tok


def score(cfg: ExperimentConfig, selector, model, tok, base, pool: pa.Table, seed: int) -> pa.Table:
    """Step 1: the features the selector asks for, over the whole pool in scoring batches, sorted by example_id."""
    columns = set(selector.requires) | set(selector.optional)
    want = columns - {"skill"}
    sc = cfg.scoring
    scorer = Scorer(
        model.eval(),
        tok,
        want,
        max_length=cfg.model.max_length,
        grad_dim=sc.grad_dim,
        grad_params=sc.grad_params,
        projection_seed=seed,
        reference=base.eval() if "quality" in want else None,
    )
    features = scorer.score_batches(pool.slice(i, sc.batch_size) for i in range(0, pool.num_rows, sc.batch_size))
    return features.append_column("skill", pool.column("skill")) if "skill" in columns else features


def probe(cfg: ExperimentConfig, model, tok, nxt: StageSets, seed: int, t: int) -> None:
    """Step 5: fine-tune a copy of the model on stage t+1's probe sample, evaluating stage t+1 as it goes."""
    twin = copy.deepcopy(model)
    target = EvalSet(f"eval/stage{t + 1}", nxt.eval, t + 1)
    p = cfg.probe
    train_loop(
        twin,
        tok,
        nxt.probe,
        cfg,
        steps=p.steps,
        lr=p.lr,
        seed=seed * 1000 + t + 500,
        eval_every=p.eval_every,
        evaluate=lambda: judge(twin, tok, [target], cfg),
    )


def stage(cfg, selector, model, tok, base, suite: Suite, t: int, seed: int, timer: Timer) -> list[dict]:
    """Score, select, train, evaluate and probe stage t; returns row t of the metrics."""
    st = suite.stages[t - 1]
    pool = st.pool.sort_by("example_id")
    with timer("scoring"):
        features = score(cfg, selector, model, tok, base, pool, seed)
    with timer("selection"):
        ids = selector.select(features, st.budget, SelectionContext(seed=seed))
        selected = pool.take(pa.array(np.searchsorted(column(pool, "example_id"), ids)))
    with timer("training"):
        own = EvalSet(f"eval/stage{t}", st.eval, t)
        tr = cfg.training
        train_loop(
            model,
            tok,
            selected,
            cfg,
            steps=tr.steps,
            lr=tr.lr,
            seed=seed * 1000 + t,
            eval_every=tr.eval_every,
            evaluate=lambda: judge(model, tok, [own], cfg),
        )
    with timer("evaluation"):
        rows = judge(model, tok, judged_sets(suite), cfg)
    if t < len(suite.stages):
        with timer("probe"):
            probe(cfg, model, tok, suite.stages[t], seed, t)
    return rows


def plain_run(cfg: ExperimentConfig, threads: int) -> tuple[float, dict[str, float], pd.DataFrame]:
    """The whole protocol in this process: (wall seconds incl. this script's imports, seconds per phase, metrics)."""
    torch.set_num_threads(threads)
    timer, rows, start = Timer({"start-up": IMPORT_SECONDS}), [], time.perf_counter()
    for seed in cfg.seeds:
        suite = build_suite(cfg, seed)
        base, tok = warm_up(cfg, suite, seed, timer)
        with timer("evaluation"):
            base_rows = judge(base, tok, judged_sets(suite), cfg)
        for s in cfg.selectors:
            selector, model = get_selector(s.name, **s.params), copy.deepcopy(base)
            rows += [{**r, "selector": s.key, "seed": seed, "stage": 0} for r in base_rows]
            for t in range(1, len(suite.stages) + 1):
                found = stage(cfg, selector, model, tok, base, suite, t, seed, timer)
                rows += [{**r, "selector": s.key, "seed": seed, "stage": t} for r in found]
    return IMPORT_SECONDS + time.perf_counter() - start, timer.seconds, pd.DataFrame(rows)


# --- the lhas-ray side: the CLI as a user runs it -------------------------------------------------------------


def cli() -> list[str]:
    """The ``lhas-ray`` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("lhas-ray")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from lhas_ray.cli import main; main()"]


def ray_run(cfg: ExperimentConfig, folder: Path, report: bool) -> tuple[float, dict[str, float], pd.DataFrame]:
    """``lhas-ray run`` in a subprocess: (wall seconds, seconds per phase from timings.parquet, metrics). With groups
    side by side, a phase's seconds are the mean over the groups (Ray's start, booked once, is taken whole)."""
    config = folder / "bench_e2e.yaml"
    config.write_text(dump_config(cfg))
    out, console = folder / "lhas_ray_run", folder / "lhas_ray_console.txt"
    cmd = [*cli(), "run", str(config), "--output", str(out), *([] if report else ["--no-report"])]
    with open(console, "w") as f:
        start = time.perf_counter()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - start
    if rc:
        raise SystemExit(f"bench_e2e: lhas-ray run failed (exit {rc}); see {console} and {out}/logs/")
    store = ResultStore(str(out))
    timings = store.read_table("timings").to_pandas()
    groups = cfg.ray.concurrent_trajectories
    seconds = {p: v if p == "ray_start" else v / groups for p, v in timings.groupby("phase")["seconds"].sum().items()}
    return wall, seconds, store.read_table("metrics").to_pandas()


# --- the printout ----------------------------------------------------------------------------------------------


def breakdown(wall: float, seconds: dict[str, float], side: int) -> list[float]:
    """Seconds of each ROWS row for one side (0 plain, 1 lhas-ray), then outside the phases, then the wall."""
    values = [sum(seconds.get(p, 0.0) for p in row[1 + side]) for row in ROWS]
    return [*values, wall - sum(seconds.values()), wall]


def phase_table(results: dict[str, tuple]) -> str:
    """Seconds per phase of each side that ran, with each phase's share of its wall time."""
    labels = [r[0] for r in ROWS] + ["outside the phases", "total (wall)"]
    lines = [f"{'phase':<20}" + "".join(f"{name:>22}" for name in results)]
    cols = {name: breakdown(res[0], res[1], side) for name, (res, side) in results.items()}
    for i, label in enumerate(labels):
        cells = "".join(f"{v[i]:>12.1f} s ({v[i] / v[-1]:>4.0%})" for v in cols.values())
        lines.append(f"{label:<20}{cells}")
    return "\n".join(lines)


def matrix_text(metrics: pd.DataFrame) -> str:
    """R[t, j] (rows: after stage t, 0 = base; columns: eval set of stage j) per selector."""
    lines = []
    for selector, R in mean_accuracy_matrices(metrics).items():
        mat = pd.DataFrame(R[:, 1:], columns=[f"eval{j}" for j in range(1, R.shape[1])])
        mat.index = [f"after stage {i}" for i in range(R.shape[0])]
        lines += [f"  {selector}", mat.to_string(float_format=lambda v: f"{v:.3f}")]
    return "\n".join(lines)


def load_line(when: str) -> str:
    """The load averages, and a warning when the machine was not quiet."""
    one, five, fifteen = os.getloadavg()
    note = f"  (1-min load above 1.0: timings are not from a quiet machine, {cores()} cores)" if one > 1.0 else ""
    return f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f}{note}"


def report(cfg, args, results: dict, loads: list[str]) -> dict:
    """Print the breakdown, the ratio against the target and both accuracy matrices; return the figures."""
    print("\n" + "\n".join(loads))
    print(f"\nper-phase seconds (steps {cfg.training.steps} a stage, scale {args.scale}):\n{phase_table(results)}")
    print("  start-up: plain = this script's imports; lhas-ray = ray_start + worker_start (Train workers up)")
    print("  outside the phases: wall - sum(phases) (process start, suite build, Ray Data set-up, shutdown)")
    if cfg.ray.concurrent_trajectories > 1:
        print(f"  lhas-ray phases: the mean over its {cfg.ray.concurrent_trajectories} groups, which run side by side")
    figures = {name: {"wall": res[0], "phases": res[1]} for name, (res, _) in results.items()}
    if len(results) == 2:
        ratio = results["lhas-ray"][0][0] / results["plain"][0][0]
        target = None if args.quick or args.steps != 300 else TARGETS.get(args.scale)
        print(f"\nratio lhas-ray / plain = {ratio:.2f}" + (f"  (target <= {target})" if target else ""))
        figures["ratio"] = ratio
    for name, (res, _) in results.items():
        print(f"\naccuracy matrix, {name}:\n{matrix_text(res[2])}")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per stage, before --scale")
    p.add_argument("--scale", type=int, default=1, help="multiplies the stage steps (10: the 'stages 10x' target)")
    p.add_argument("--selectors", nargs="+", default=["random", "loss_high"], help="selector names (no context)")
    p.add_argument("--quick", action="store_true", help="small pools, sets, warm-up and probes: a correctness check")
    p.add_argument("--out", default="outputs/bench_e2e", help="a fresh run-<time> folder is made under it")
    p.add_argument("--report", action="store_true", help="let lhas-ray run write its report (plain writes none)")
    p.add_argument("--threads", type=int, default=cores(), help="torch threads of the plain side (default: cores)")
    p.add_argument(
        "--workers", type=int, default=1, help="Train workers of the lhas-ray side (default 1: measured fastest here)"
    )
    p.add_argument(
        "--cpus-per-worker", type=float, default=cores(), help="CPUs (torch threads) per Train worker (default: cores)"
    )
    p.add_argument(
        "--groups",
        type=int,
        default=1,
        help="trajectory groups side by side on the lhas-ray side (ray.concurrent_trajectories; 2 with "
        "--cpus-per-worker 1: one single-thread worker per selector, the demo's layout)",
    )
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    args = p.parse_args()
    cfg = bench_config(
        args.steps * args.scale, args.selectors, args.quick, args.workers, args.cpus_per_worker, args.groups
    )
    folder = Path(args.out).resolve() / time.strftime("run-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True)
    print(
        f"bench_e2e: {len(cfg.selectors)} selectors x {len(cfg.seeds)} seed x {len(cfg.stages)} stages, "
        f"{cfg.training.steps} steps a stage, warm-up {cfg.training.warmup.steps}, probes {cfg.probe.steps}; "
        f"{cores()} cores, plain on {args.threads} threads, lhas-ray on {cfg.ray.concurrent_trajectories} group(s) of "
        f"{cfg.training.num_workers} Train workers x {cfg.training.cpus_per_worker:g} CPUs; output {folder}",
        flush=True,
    )
    loads, results = [load_line("before")], {}
    if not args.skip_plain:
        results["plain"] = (plain_run(cfg, args.threads), 0)
        print(f"plain: {results['plain'][0][0]:.1f} s", flush=True)
        loads.append(load_line("after plain"))
    if not args.skip_ray:
        results["lhas-ray"] = (ray_run(cfg, folder, args.report), 1)
        print(f"lhas-ray run: {results['lhas-ray'][0][0]:.1f} s", flush=True)
        loads.append(load_line("after lhas-ray"))
    figures = report(cfg, args, results, loads)
    (folder / "bench_e2e.json").write_text(json.dumps({**figures, "load": loads, "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
