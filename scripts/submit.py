#!/usr/bin/env python
"""Submit ``lhas-ray run|tune`` to a Ray cluster through the Jobs API (``JobSubmissionClient``).

    python scripts/submit.py [--address URL] [--name ID] [--output-root URI] [--no-wait] -- tune CONFIG --space S ...

* The job's ``working_dir`` is this repository (clusters/runtime_env.yaml), without outputs, checkpoints or .venv.
* The submission id is stable: ``--name``, or a digest of the command, so the same command always gets the same id.
  It doubles as the run name: with ``--output-root R`` the run writes to ``R/<id>``. Submitting the same command
  again after a failure resubmits under the same id into the same folder, and the run or sweep resumes there.
* A job with that id already on the cluster: running or pending, the script follows its logs; failed or stopped, it
  deletes the old record and resubmits; succeeded, it says so (``--rerun`` resubmits, which resumes and finds
  nothing left to do).
* The experiment config (and search space) is validated here before anything is sent to the cluster.
* Logs are tailed until the job ends (exit 0 when it succeeded, 1 otherwise), unless ``--no-wait``.

The cluster address comes from ``--address``, else ``RAY_ADDRESS``, else http://127.0.0.1:8265 (a port-forwarded or
SSH-tunnelled dashboard, clusters/README.md). With token authentication on, export ``RAY_AUTH_MODE=token`` and the
token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``); the client sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RUNTIME_ENV = REPO / "clusters" / "runtime_env.yaml"
REQUIRED_EXCLUDES = (".git/", ".venv/", "outputs/", "checkpoints/", "**/checkpoints/")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split the script's own options from the ``lhas-ray`` command after ``--``."""
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1 :]
    else:
        own, command = [], argv
    p = argparse.ArgumentParser(prog="submit.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS, help="Ray dashboard URL")
    p.add_argument("--name", help="submission id and run name (default: derived from the command)")
    p.add_argument("--output-root", help="write the run to OUTPUT_ROOT/<submission id> (unless --output is given)")
    p.add_argument(
        "--runtime-env", default=str(RUNTIME_ENV), help="runtime_env YAML (default clusters/runtime_env.yaml)"
    )
    p.add_argument("--working-dir", default=str(REPO), help="folder shipped as the job's working_dir (default: repo)")
    p.add_argument("--no-wait", action="store_true", help="submit and return; follow later with `ray job logs -f ID`")
    p.add_argument("--rerun", action="store_true", help="resubmit even if a job with this id already succeeded")
    args = p.parse_args(own)
    if not command or command[0] not in ("run", "tune"):
        p.error("give the lhas-ray command after --, e.g. -- tune CONFIG --space SPACE --trials 20")
    return args, command


def _option(command: list[str], *names: str) -> str | None:
    """The value of an option of the lhas-ray command (``--x v`` or ``--x=v``), or None."""
    for i, arg in enumerate(command):
        for name in names:
            if arg == name and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def submission_id(command: list[str], output_root: str | None = None) -> str:
    """A stable id for a command: ``lhas-<run|tune>-<config stem>-<digest of the whole command>``."""
    config = next((a for a in command[1:] if not a.startswith("-")), "config")
    stem = re.sub(r"[^a-z0-9]+", "-", Path(config).stem.lower()).strip("-") or "config"
    digest = hashlib.sha1(json.dumps([command, output_root]).encode()).hexdigest()[:8]
    return f"lhas-{command[0]}-{stem}-{digest}"


def entrypoint(command: list[str], sid: str, output_root: str | None) -> str:
    """The shell command the job runs: the lhas-ray command, its output folder, and the cluster it is on."""
    args = list(command)
    if _option(args, "--output", "-o") is None and not (args[0] == "tune" and _option(args, "--resume")):
        if not output_root:
            raise SystemExit("submit.py: give --output OUT in the lhas-ray command, or --output-root ROOT")
        args += ["--output", f"{output_root.rstrip('/')}/{sid}"]
    if _option(args, "--ray-address") is None:
        args += ["--ray-address", "auto"]
    return shlex.join(["python", "-m", "lhas_ray.cli", *args])


def runtime_env(path: str, working_dir: str) -> dict:
    """The job's runtime_env: the YAML file, with working_dir made absolute and the required excludes added."""
    env = yaml.safe_load(Path(path).read_text()) or {}
    wd = env.get("working_dir", ".")
    if "://" not in str(wd):
        env["working_dir"] = str((Path(working_dir) / wd).resolve()) if wd == "." else str(Path(wd).resolve())
    env["excludes"] = list(dict.fromkeys([*env.get("excludes", []), *REQUIRED_EXCLUDES]))
    env.setdefault("env_vars", {}).setdefault("RAY_TRAIN_V2_ENABLED", "1")
    return env


def validate_command(command: list[str], working_dir: str) -> None:
    """Load the experiment config (with its --set overrides) and the search space the command names; exit 2 if bad."""
    sys.path.insert(0, str(REPO))
    from lhas_ray.config import ConfigError, load_config
    from lhas_ray.tuning.space import SearchSpaceError, load_search_space

    config = next((a for a in command[1:] if not a.startswith("-")), None)
    if config is None:  # `tune --resume OUT`: the sweep folder holds its config
        return
    overrides = [command[i + 1] for i, a in enumerate(command[:-1]) if a == "--set"]
    try:
        path = Path(working_dir) / config if not Path(config).is_absolute() else Path(config)
        cfg = load_config(path if path.exists() else config, overrides)
        if command[0] == "tune":
            space = _option(command, "--space") or cfg.tune.space
            if space is None:
                raise ConfigError("no search space: pass --space search_spaces/NAME.yaml or set tune.space")
            load_search_space(Path(working_dir) / space if (Path(working_dir) / space).exists() else space)
    except (ConfigError, SearchSpaceError, ValueError) as e:
        print(f"submit.py: the command's config is invalid, nothing was submitted:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None


def submit(client, sid: str, entry: str, env: dict, rerun: bool = False) -> str:
    """Submit under ``sid``; returns 'submitted', 'attached' (already running) or 'done' (already succeeded)."""
    try:
        status = str(client.get_job_status(sid)).rsplit(".", 1)[-1]
    except RuntimeError:  # no job with this id on this cluster
        status = None
    if status is not None and status not in TERMINAL:
        return "attached"
    if status == "SUCCEEDED" and not rerun:
        return "done"
    if status is not None:
        client.delete_job(sid)  # a failed or stopped record would block the id; its results folder stays
    client.submit_job(entrypoint=entry, submission_id=sid, runtime_env=env, metadata={"run_name": sid})
    return "submitted"


async def _tail(client, sid: str) -> None:
    async for lines in client.tail_job_logs(sid):
        print(lines, end="", flush=True)


def follow(client, sid: str) -> int:
    """Print the job's logs as they come until it ends; 0 if it succeeded, else 1."""
    asyncio.run(_tail(client, sid))
    status = str(client.get_job_status(sid)).rsplit(".", 1)[-1]
    print(f"\njob {sid}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def main(argv: list[str] | None = None, client_factory=None) -> int:
    """Validate, submit (or attach), and follow the job unless --no-wait."""
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    validate_command(command, args.working_dir)
    sid = args.name or submission_id(command, args.output_root)
    entry = entrypoint(command, sid, args.output_root)
    env = runtime_env(args.runtime_env, args.working_dir)
    if client_factory is None:
        from ray.job_submission import JobSubmissionClient as client_factory
    client = client_factory(args.address)
    state = submit(client, sid, entry, env, rerun=args.rerun)
    print(f"job {sid}: {state} ({entry})")
    if state == "done":
        print("it already succeeded; pass --rerun to submit it again")
        return 0
    if args.no_wait:
        print(f"follow it with: ray job logs -f {sid} --address {args.address}")
        return 0
    return follow(client, sid)


if __name__ == "__main__":
    sys.exit(main())
