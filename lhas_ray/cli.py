"""``lhas-ray``: run | demo | validate | report | tune | confirm | export. The only entry point, also inside ``ray job submit``."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from lhas_ray.config import ConfigError, ExperimentConfig, load_config
from lhas_ray.console import configure_console, logs_dir

DEMO_OUTPUT = "outputs/demo"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lhas-ray", description="Long-horizon data selection experiments on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def add_common(sp: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            sp.add_argument("config", help="experiment YAML, or a packaged config name (demo, study, ...)")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set training.lr=1e-3 --set stages.0.budget=50",
        )
        add_verbose(sp)

    def add_verbose(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--verbose",
            "-v",
            action="store_true",
            help="show everything Ray, DeepSpeed, torch and transformers print (default: only in OUT/logs/)",
        )

    run = sub.add_parser("run", help="run (or resume) an experiment")
    add_common(run)
    run.add_argument("--output", "-o", help="results folder or URI (default: the config's 'output')")
    run.add_argument("--ray-address", help="'auto' inside `ray job submit`; default: start a local Ray")
    run.add_argument("--no-report", action="store_true", help="skip writing the report at the end")

    demo = sub.add_parser("demo", help="run the packaged demo config on the embedded default")
    add_common(demo, config=False)
    demo.add_argument("--output", "-o", default=DEMO_OUTPUT, help=f"results folder (default {DEMO_OUTPUT})")
    demo.add_argument("--ray-address", help="'auto' inside `ray job submit`; default: start a local Ray")
    demo.add_argument("--no-report", action="store_true", help="skip writing the report at the end")

    val = sub.add_parser("validate", help="check a config without starting Ray")
    add_common(val)

    rep = sub.add_parser("report", help="write OUT/report.html (and report.md) for a finished run")
    rep.add_argument("output", help="the run's results folder")

    tune = sub.add_parser("tune", help="search the LHAS weights with Ray Tune + Optuna (or resume a sweep)")
    tune.add_argument("config", nargs="?", help="experiment YAML or packaged name; omit with --resume OUT")
    tune.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set tune.objective='acc - forgetting'",
    )
    add_verbose(tune)
    tune.add_argument("--space", help="search-space YAML, e.g. search_spaces/lhas_default.yaml (default: tune.space)")
    tune.add_argument("--trials", type=int, help="number of trials (default: tune.trials)")
    tune.add_argument("--output", "-o", help="sweep folder or URI (default: the config's 'output')")
    tune.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="OUT",
        help="continue the interrupted sweep in OUT (config, space and trials as it was started)",
    )
    tune.add_argument("--ray-address", help="'auto' inside `ray job submit`; default: start a local Ray")
    tune.add_argument("--no-report", action="store_true", help="skip writing the sweep's report at the end")
    tune.add_argument(
        "--no-confirm", action="store_true", help="skip the held-out confirmation (tune.heldout_seeds) at the end"
    )

    exp = sub.add_parser("export", help="write one selection (selector, seed, stage) of a run as a dataset")
    exp.add_argument("output", help="the run's results folder")
    exp.add_argument("--selector", required=True, help="selector key, as in the run's config (its label if it has one)")
    exp.add_argument("--seed", type=int, required=True, help="trajectory seed")
    exp.add_argument("--stage", type=int, required=True, help="stage (1..T)")
    exp.add_argument("--to", required=True, help="destination folder (new or empty)")
    exp.add_argument(
        "--format",
        choices=["hf", "jsonl", "parquet"],
        default="hf",
        help="hf: datasets.load_from_disk(DIR); jsonl / parquet: DIR/data.* for load_dataset (default hf)",
    )
    exp.add_argument(
        "--push-to-hub", metavar="REPO", help="also push it to the Hugging Face Hub (needs network, login)"
    )

    conf = sub.add_parser(
        "confirm", help="rerun a sweep's best weights beside the baselines on held-out seeds (or resume that)"
    )
    conf.add_argument("output", help="the sweep's folder or URI")
    conf.add_argument("--seeds", type=int, nargs="+", help="held-out seeds (default: the sweep's tune.heldout_seeds)")
    conf.add_argument("--ray-address", help="'auto' inside `ray job submit`; default: start a local Ray")
    conf.add_argument("--no-report", action="store_true", help="skip writing the reports at the end")
    add_verbose(conf)
    return p


def accuracy_text(out: str) -> str:
    """The closing table: R[t, j] per selector (mean over seeds, evaluation.metrics.mean_accuracy_matrices), as text."""
    import pandas as pd

    from lhas_ray.evaluation.metrics import mean_accuracy_matrices
    from lhas_ray.store import ResultStore

    table = ResultStore(out).read_table("metrics")
    if table is None:
        return "(no committed results)"
    df = table.to_pandas()
    seeds = df.groupby("selector")["seed"].nunique()
    lines = []
    for selector, R in mean_accuracy_matrices(df).items():
        mat = pd.DataFrame(R[:, 1:], columns=[f"eval{j}" for j in range(1, R.shape[1])])
        mat.index = [f"after stage {i}" for i in range(R.shape[0])]
        n = int(seeds[selector])
        lines.append(f"\n{selector}  (accuracy, mean of {n} seed{'s' if n > 1 else ''})")
        lines.append(mat.to_string(float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)


def _run(cfg: ExperimentConfig, out: str, address: str | None, report: bool, verbose: bool = False) -> int:
    from lhas_ray.launch import run_experiment

    logs = logs_dir(out)
    units = len(cfg.selectors) * len(cfg.seeds) * (len(cfg.stages) + 1)
    print(
        f"lhas-ray run {cfg.name}: {len(cfg.selectors)} selectors x {len(cfg.seeds)} seeds x {len(cfg.stages)} stages "
        f"(+ the base model) = {units} units into {out}" + (f"; logs in {logs}" if logs else ""),
        flush=True,
    )
    start = time.perf_counter()
    from lhas_ray.tracking import warm_trackers

    warm_trackers(cfg)
    run_experiment(cfg, out, address, verbose)
    print(f"\nfinished in {time.perf_counter() - start:.0f}s; results in {out}")
    print(accuracy_text(out))
    if report:
        from lhas_ray.report import write_report

        print(f"\nreport: {write_report(out)}")
    if cfg.tracking.mlflow is not None:
        from lhas_ray.tracking import log_run_to_mlflow

        started = time.perf_counter()
        runs = log_run_to_mlflow(out, cfg, cfg.tracking.mlflow)
        print(
            f"mlflow: {len(runs)} trajectories in experiment {cfg.tracking.mlflow.experiment or cfg.name!r} "
            f"({time.perf_counter() - started:.1f}s)"
        )
    if cfg.tracking.wandb is not None:
        from lhas_ray.tracking_wandb import log_run_to_wandb

        started = time.perf_counter()
        runs = log_run_to_wandb(out, cfg, cfg.tracking.wandb)
        wb = cfg.tracking.wandb
        print(
            f"wandb: {len(runs)} trajectories in project {wb.project!r} ({wb.mode}, "
            f"{time.perf_counter() - started:.1f}s)"
        )
    return 0


def _tune(args: argparse.Namespace) -> int:
    """``lhas-ray tune``: validate everything (config, space) before Ray starts, run or resume the sweep, report."""
    from lhas_ray.tuning.space import load_search_space

    resume_out = args.resume if isinstance(args.resume, str) else None
    if args.config is None:
        if not resume_out and not (args.resume and args.output):
            raise ConfigError("give a CONFIG to start a sweep, or --resume OUT to continue one")
        if args.overrides or args.space or args.trials:
            raise ConfigError("--resume OUT continues the sweep as it was started: drop --set, --space and --trials")
        from lhas_ray.tuning.sweep import load_sweep

        out = resume_out or args.output
        cfg, space, trials = load_sweep(out)
        check_machine(cfg)
    else:
        cfg = load_config(args.config, args.overrides)
        check_machine(cfg)
        out = resume_out or args.output or cfg.output
        if not out:
            raise ConfigError("no output folder: pass --output OUT or set 'output' in the config")
        if not (args.space or cfg.tune.space):
            raise ConfigError("no search space: pass --space search_spaces/NAME.yaml or set tune.space")
        space = load_search_space(args.space or cfg.tune.space)
        trials = args.trials or cfg.tune.trials
        if trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {trials}")
    args.output = out  # resolved (from --resume or the config), so a failure can point at its logs
    from lhas_ray.tuning.results import sweep_summary
    from lhas_ray.tuning.sweep import run_sweep

    logs = logs_dir(out)
    print(
        f"lhas-ray tune {cfg.name}: {trials} trials of {len(cfg.seeds)} seeds x {len(cfg.stages)} stages, "
        f"scheduler {cfg.tune.scheduler}, into {out}" + (f"; logs in {logs}" if logs else ""),
        flush=True,
    )
    start = time.perf_counter()
    result = run_sweep(
        cfg, space, out, trials=trials, address=args.ray_address, resume=bool(args.resume), verbose=args.verbose
    )
    print(f"\nsweep finished in {time.perf_counter() - start:.0f}s; results in {out}")
    print(sweep_summary(result, result.config))
    if result.best is None:
        return 1
    if cfg.tune.heldout_seeds and not args.no_confirm:
        return _confirm(out, None, args.ray_address, report=not args.no_report, verbose=args.verbose)
    if not args.no_report:
        from lhas_ray.report import write_report

        print(f"\nreport: {write_report(out)}")
    return 0


def _confirm(out: str, seeds: list[int] | None, address: str | None, report: bool, verbose: bool = False) -> int:
    """``lhas-ray confirm``: baselines on the development seeds, then the tuned weights on the held-out ones."""
    from lhas_ray.tuning.confirm import CONFIRM_DIR, confirm, confirmation_summary
    from lhas_ray.tuning.trials import child_uri

    start = time.perf_counter()
    result = confirm(out, address=address, seeds=seeds, verbose=verbose)
    print(f"\nconfirmation finished in {time.perf_counter() - start:.0f}s; results in {child_uri(out, CONFIRM_DIR)}")
    print(confirmation_summary(result))
    if report:
        from lhas_ray.report import write_report

        print(f"\nreport of the held-out run: {write_report(child_uri(out, CONFIRM_DIR))}")
        print(f"report of the sweep: {write_report(out)}")
    return 0


def check_machine(cfg: ExperimentConfig) -> None:
    """Refuse a config whose model folder, packages or data files are not what it says, before any Ray work."""
    from lhas_ray.config.preflight import preflight

    if problems := preflight(cfg):
        raise ConfigError("config points at what this machine does not have:\n  " + "\n  ".join(problems))


def _logs_hint(out: str | None) -> str:
    """Where the full output of a failed command is (OUT/logs/), when OUT is a local folder."""
    logs = logs_dir(out)
    return f"\nFull logs (driver and every Train worker): {logs}" if logs and os.path.isdir(logs) else ""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_console(getattr(args, "verbose", False))
    try:
        if args.command == "report":
            from lhas_ray.report import write_report

            print(write_report(args.output))
            return 0
        if args.command == "tune":
            return _tune(args)
        if args.command == "export":
            from lhas_ray.export import ExportRequest, export_selection

            req = ExportRequest(args.output, args.selector, args.seed, args.stage, args.to, args.format)
            print(f"exported to {export_selection(req, push_to_hub=args.push_to_hub)}")
            return 0
        if args.command == "confirm":
            return _confirm(args.output, args.seeds, args.ray_address, report=not args.no_report, verbose=args.verbose)
        cfg = load_config("demo" if args.command == "demo" else args.config, args.overrides)
        check_machine(cfg)
        if args.command == "validate":
            if cfg.tune.space:
                from lhas_ray.tuning.space import load_search_space

                load_search_space(cfg.tune.space)
            print(
                f"{args.config}: valid ({len(cfg.stages)} stages, {len(cfg.selectors)} selectors, {len(cfg.seeds)} seeds)"
            )
            return 0
        args.output = out = args.output or cfg.output  # resolved here, so a failure can point at its logs
        if not out:
            raise ConfigError("no output folder: pass --output OUT or set 'output' in the config")
        return _run(cfg, out, args.ray_address, report=not args.no_report, verbose=args.verbose)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        if getattr(args, "verbose", False):  # where it came from, for errors that are not the config's
            traceback.print_exc()
        print(f"lhas-ray: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failed Train run: say where the results are and how to resume
        from ray.train import TrainingFailedError

        if not isinstance(e, TrainingFailedError):
            raise
        print(
            f"lhas-ray: training failed: {e}\nEvery completed stage is saved; run the same command again to resume."
            + _logs_hint(getattr(args, "output", None)),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
