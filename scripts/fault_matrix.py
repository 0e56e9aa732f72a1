"""The fault matrix: every fault of issue 13.4 dealt to a real micro run, and what became of it.

    python scripts/fault_matrix.py [--root DIR] [--only NAME ...]

A clean run (and a clean 2-trial sweep) are the references. Then, each in a fresh output folder:
  * kill -9 of one Train worker (rank 1) as the rank-0 log announces each phase of stage 1 (scoring, selection,
    training, checkpoint, evaluation, probe): Ray Train restarts the worker group (training.max_failures) and the run
    goes on from its last committed stage;
  * kill -9 of the driver (the CLI's process group) once the first part of stage 1 is on disk and before its commit
    marker; then the same command again;
  * kill -9 of a trial process (Tune's ImplicitFunc actor) during a sweep, once its stage 1 is committed;
  * a truncated committed parquet part, a commit marker lost between committed stages, the last marker lost;
  * the output filesystem full (a tmpfs too small for the run; then remounted larger and the command rerun).
For each: how the run ended, whether the selections are identical to the clean run's and the metrics equal to them
(atol 1e-5), whether any row is duplicated, and whether anything committed before the fault was rewritten. The
table is printed and written to ROOT/fault_matrix.md and .json. Needs root for the tmpfs (else that row says so).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import yaml

from lhas_ray.store import ResultStore

PHASES = ("scoring", "selection", "training", "checkpoint", "evaluation", "probe")

# Injected from outside the product: a sitecustomize on the run's PYTHONPATH (Ray's local workers inherit the
# driver's environment) that, once lhas_ray.progress is imported in a Train worker, makes rank 1 SIGKILL itself as it
# enters phase FAULT_PHASE of stage 1, once per run (a flag file). Phases too short to hit from a log watcher
# (selection, checkpoint) are hit exactly.
SITECUSTOMIZE = """
import importlib.abc, importlib.util, json, os, signal, sys

PHASE, FLAG = os.environ.get("FAULT_PHASE"), os.environ.get("FAULT_FLAG")


def _patch(module):
    from lhas_ray.training.dist import rank

    enter = module.Timer.__call__

    def call(self, phase):
        where = getattr(self.progress, "where", "") if self.progress is not None else ""
        if phase == PHASE and "stage 1/" in where and rank() == 1 and not os.path.exists(FLAG):
            committed = os.path.join(os.environ["FAULT_OUT"], "_committed")
            names = [os.path.join(committed, n) for n in os.listdir(committed)]
            with open(FLAG, "w") as f:
                json.dump({"pid": os.getpid(), "at": f"{where}: {phase}",
                           "committed": {n: os.path.getmtime(n) for n in names}}, f)
            os.kill(os.getpid(), signal.SIGKILL)
        return enter(self, phase)

    module.Timer.__call__ = call


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "lhas_ray.progress":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if PHASE and FLAG:
    sys.meta_path.insert(0, _Hook())
"""
KEY = ["selector", "seed", "stage", "eval_set", "skill", "metric"]


def micro(num_workers: int = 2) -> dict:
    """Tiny GPT-2, 2 stages, random and lhas, 1 seed: every phase of the protocol in about a minute."""
    stage = {"budget": 96, "pool": {"size": 512}, "eval_size": 48, "ood_size": 8, "probe_size": 32}
    return {
        "name": "faults",
        "model": {"name": "tiny-gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 24},
        "data": {"seed": 0, "min_len": 2, "max_len": 4},
        "stages": [{"name": "rev", "targets": ["reverse"], **stage}, {"name": "srt", "targets": ["sort"], **stage}],
        "selectors": [{"name": "random"}, {"name": "lhas"}],
        "seeds": [0],
        "training": {
            "steps": 60,
            "lr": 3e-3,
            "batch_size": 16,
            "num_workers": num_workers,
            "eval_every": 20,
            "max_failures": 2,
            "warmup": {"steps": 30, "size": 256, "lr": 3e-3},
        },
        "probe": {"steps": 12, "eval_every": 4},
        "scoring": {"batch_size": 64},
        "evaluation": {"general_size": 8},
    }


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lhas_ray.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def spawn(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lhas_ray.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def markers(out: str) -> dict[str, float]:
    return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "_committed", "*.json"))}


def compare(out: str, ref: str) -> dict:
    """Selections identical, metrics equal, no duplicate rows: this folder against the reference."""
    sel_ok = True
    for path in glob.glob(os.path.join(ref, "selections", "*", "*", "*.parquet")):
        mine = os.path.join(out, os.path.relpath(path, ref))
        if not os.path.exists(mine) or not np.array_equal(
            pd.read_parquet(path)["example_id"].to_numpy(), pd.read_parquet(mine)["example_id"].to_numpy()
        ):
            sel_ok = False
    a = ResultStore(out).read_table("metrics")
    b = ResultStore(ref).read_table("metrics")
    if a is None or b is None:
        return {"selections_identical": sel_ok, "metrics_equal": False, "duplicates": None}
    a, b = a.to_pandas(), b.to_pandas()
    dup = bool(a.duplicated(KEY).any())
    a, b = a.sort_values(KEY).reset_index(drop=True), b.sort_values(KEY).reset_index(drop=True)
    equal = a[KEY].equals(b[KEY]) and np.allclose(a["value"], b["value"], rtol=0, atol=1e-5, equal_nan=True)
    return {"selections_identical": sel_ok, "metrics_equal": bool(equal), "duplicates": dup}


def untouched(before: dict[str, float]) -> bool:
    return all(os.path.exists(p) and os.path.getmtime(p) == m for p, m in before.items())


def worker_phase_fault(root: str, cfg_path: str, ref: str, phase: str) -> dict:
    out = os.path.join(root, f"worker-{phase}")
    hook = os.path.join(root, "_hook")
    os.makedirs(hook, exist_ok=True)
    open(os.path.join(hook, "sitecustomize.py"), "w").write(SITECUSTOMIZE)
    flag = os.path.join(root, f"killed-{phase}")
    env = {**os.environ, "FAULT_PHASE": phase, "FAULT_FLAG": flag, "FAULT_OUT": out}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "lhas_ray.cli", "run", cfg_path, "-o", out, "--no-report"],
                          capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    row = {"fault": f"kill -9 Train worker (rank 1) entering {phase}", "rc": done.returncode}
    if not os.path.exists(flag):
        return {**row, "outcome": f"not injected: {done.stderr[-300:]}"}
    killed = json.load(open(flag))
    row["killed"] = f"pid {killed['pid']} at {killed['at']}"
    outcome = "finished by itself (Train restarted the worker group)"
    before = killed["committed"]  # what was committed when the worker died: must not be rewritten
    if done.returncode != 0:
        again = cli("run", cfg_path, "-o", out, "--no-report")
        outcome = f"failed ({done.stderr.strip().splitlines()[-1][:120]}); rerun rc {again.returncode}"
    restarts = len(ResultStore(out).read_table("timings").to_pandas().query("phase == 'worker_start'"))
    return {**row, "outcome": outcome, "worker_start_rows": restarts, "committed_before_untouched": untouched(before),
            **compare(out, ref)}  # fmt: skip


def driver_commit_fault(root: str, cfg_path: str, ref: str) -> dict:
    out = os.path.join(root, "driver-commit")
    proc = spawn("run", cfg_path, "-o", out, "--no-report")
    part = os.path.join(out, "metrics.parquet", "random__s0__t1.parquet")
    marker = os.path.join(out, "_committed", "random__s0__t1.json")
    deadline, state = time.time() + 600, "not injected"
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(part):
            state = "after the part, before its marker" if not os.path.exists(marker) else "after the marker"
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = markers(out)
    again = cli("run", cfg_path, "-o", out, "--no-report")
    return {"fault": "kill -9 driver during a commit", "injected": state, "rc": again.returncode,
            "outcome": "finished after a rerun" if again.returncode == 0 else f"rerun failed: {again.stderr[-300:]}",
            "committed_before_untouched": untouched(before), **compare(out, ref)}  # fmt: skip


def sweep_files(root: str, name: str) -> tuple[str, str, str]:
    raw = micro(num_workers=1)
    raw["name"] = "faults-sweep"
    raw["tune"] = {"trials": 2, "max_concurrent": 1, "scheduler": "fifo", "seed": 0, "max_failures": 2}
    cfg, space = os.path.join(root, f"{name}.yaml"), os.path.join(root, f"{name}-space.yaml")
    open(cfg, "w").write(yaml.safe_dump(raw))
    open(space, "w").write(yaml.safe_dump({"params": {"l_u": {"type": "uniform", "low": 0.1, "high": 2.0}}}))
    return cfg, space, os.path.join(root, name)


def trial_fault(root: str, ref_sweep: str) -> dict:
    cfg, space, out = sweep_files(root, "sweep-trial-kill")
    proc = spawn("tune", cfg, "--space", space, "-o", out, "--no-report")
    killed, before, deadline = None, {}, time.time() + 900
    while time.time() < deadline and proc.poll() is None and killed is None:
        done = glob.glob(os.path.join(out, "trials", "*", "_committed", "lhas__s0__t1.json"))
        if done:
            trial = done[0].split(os.sep)[-3]
            before = markers(os.path.join(out, "trials", trial))
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if "ImplicitFunc" in " ".join(p.info["cmdline"] or []):
                        p.kill()
                        killed = p.pid
                except psutil.Error:
                    pass
        time.sleep(0.1)
    output = proc.communicate(timeout=1200)[0]
    row = {"fault": "kill -9 trial process during a sweep", "killed_pid": killed, "rc": proc.returncode}
    if killed is None:
        return {**row, "outcome": "not injected"}
    trials = (
        pd.read_parquet(os.path.join(out, "trials.parquet"))
        if os.path.exists(os.path.join(out, "trials.parquet"))
        else None
    )
    ok = trials is not None and set(trials["status"]) == {"completed"}
    same = {}
    clean = pd.read_parquet(os.path.join(ref_sweep, "trials.parquet")).set_index("trial_number")["trial"]
    for number, name in [] if trials is None else zip(trials["trial_number"], trials["trial"], strict=True):
        same[name] = compare(os.path.join(out, "trials", name), os.path.join(ref_sweep, "trials", clean[number]))
    return {**row, "outcome": ("finished by itself (Tune retried the trial)" if ok else f"failed: {output[-300:]}"),
            "committed_before_untouched": untouched(before),
            "selections_identical": all(v["selections_identical"] for v in same.values()) if same else False,
            "metrics_equal": all(v["metrics_equal"] for v in same.values()) if same else False,
            "duplicates": any(v["duplicates"] for v in same.values()) if same else None}  # fmt: skip


def file_fault(root: str, cfg_path: str, ref: str, kind: str) -> dict:
    out = os.path.join(root, f"file-{kind}")
    shutil.copytree(ref, out)
    if kind == "truncated-part":
        part = os.path.join(out, "metrics.parquet", "lhas__s0__t1.parquet")
        open(part, "r+b").truncate(os.path.getsize(part) // 2)
    elif kind == "marker-between":
        os.remove(os.path.join(out, "_committed", "lhas__s0__t1.json"))
    elif kind == "marker-last":
        os.remove(os.path.join(out, "_committed", "lhas__s0__t2.json"))
    before = markers(out)
    first = cli("run", cfg_path, "-o", out, "--no-report")
    row = {"fault": kind.replace("-", " "), "rc": first.returncode, "message": first.stderr.strip()[-400:]}
    if first.returncode == 0:
        return {**row, "outcome": "finished after a rerun", "committed_before_untouched": untouched(before),
                **compare(out, ref)}  # fmt: skip
    if kind == "truncated-part":  # the advice: delete the named markers, rerun
        for name in ("lhas__s0__t1.json", "lhas__s0__t2.json"):
            os.remove(os.path.join(out, "_committed", name))
    elif kind == "marker-between":
        os.remove(os.path.join(out, "_committed", "lhas__s0__t2.json"))
    kept = markers(out)
    again = cli("run", cfg_path, "-o", out, "--no-report")
    return {**row, "outcome": f"stopped (rc {first.returncode}) naming the file; advice followed, rerun rc {again.returncode}",
            "committed_before_untouched": untouched(kept), **compare(out, ref)}  # fmt: skip


def disk_full_fault(root: str, cfg_path: str, ref: str) -> dict:
    out = os.path.join(root, "disk-full")
    os.makedirs(out, exist_ok=True)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(ref, "**"), recursive=True) if os.path.isfile(p))
    small = max(64 * 1024, int(size * 0.6))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={small}", "tmpfs", out], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        return {
            "fault": "output filesystem full",
            "outcome": f"not run: cannot mount a tmpfs ({mounted.stderr.strip()})",
        }
    try:
        first = cli("run", cfg_path, "-o", out, "--no-report")
        before = markers(out)
        subprocess.run(["mount", "-o", f"remount,size={size * 3}", out], check=True)
        again = cli("run", cfg_path, "-o", out, "--no-report")
        row = {"fault": f"output filesystem full ({small // 1024} KiB tmpfs)", "rc": first.returncode,
               "message": (first.stderr.strip().splitlines() or [""])[-1][:300],
               "no_space_named": "No space left on device" in first.stderr,
               "outcome": f"stopped (rc {first.returncode}); remounted larger, rerun rc {again.returncode}",
               "committed_before_untouched": untouched(before), **compare(out, ref)}  # fmt: skip
        shutil.copytree(out, out + "-copy")  # kept for inspection once the tmpfs is gone
        return row
    finally:
        subprocess.run(["umount", out])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="outputs/fault_matrix")
    parser.add_argument("--only", nargs="*", help="worker, driver, trial, files, disk (default: all)")
    args = parser.parse_args()
    only = set(args.only or ["worker", "driver", "trial", "files", "disk"])
    root = os.path.abspath(args.root)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    cfg_path = os.path.join(root, "faults.yaml")
    open(cfg_path, "w").write(yaml.safe_dump(micro()))
    started = time.time()
    ref = os.path.join(root, "clean")
    done = cli("run", cfg_path, "-o", ref, "--no-report")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "worker" in only:
        for phase in PHASES:
            record(worker_phase_fault(root, cfg_path, ref, phase))
    if "driver" in only:
        record(driver_commit_fault(root, cfg_path, ref))
    if "files" in only:
        for kind in ("truncated-part", "marker-between", "marker-last"):
            record(file_fault(root, cfg_path, ref, kind))
    if "disk" in only:
        record(disk_full_fault(root, cfg_path, ref))
    if "trial" in only:
        cfg, space, ref_sweep = sweep_files(root, "sweep-clean")
        assert cli("tune", cfg, "--space", space, "-o", ref_sweep, "--no-report").returncode == 0
        record(trial_fault(root, ref_sweep))
    cols = ["fault", "outcome", "selections_identical", "metrics_equal", "duplicates", "committed_before_untouched"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False)]
    text = "\n".join(lines)
    print(f"\n{text}\n\nfault matrix: {len(rows)} faults in {time.time() - started:.0f} s; outputs in {root}")
    open(os.path.join(root, "fault_matrix.md"), "w").write(text + "\n")
    json.dump(rows, open(os.path.join(root, "fault_matrix.json"), "w"), indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
