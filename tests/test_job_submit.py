"""The real thing: a Ray head on 127.0.0.1 with token authentication (``ray start --head``), a micro ``lhas-ray run``
submitted with ``ray job submit`` (the repository as working_dir, clusters/runtime_env.yaml), the output contract
checked, scripts/submit.py asked about the same submission id, and the head stopped.

The head is this test's own: its own ports, its own --temp-dir (so no other Ray on the machine finds it and its
address file never replaces the default one), started in a new process group that is ended at the end, and only
processes running under that temp dir are ever killed. Ray jobs need the dashboard, which needs ``ray[default]``
(aiohttp ...): without it the test is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from lhas_ray.store import ResultStore
from tests.helpers import micro_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("aiohttp") is None or importlib.util.find_spec("aiohttp_cors") is None,
        reason="`ray job submit` needs the Ray dashboard, i.e. ray[default] (aiohttp, aiohttp_cors, ...): not installed",
    ),
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ray(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """End the head's process group, then anything still running under its temp dir (this test's processes only)."""
    for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(1)
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def head(tmp_path):
    """A Ray head on 127.0.0.1 with token auth and the dashboard on 127.0.0.1; yields (dashboard URL, env)."""
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="lhr-", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(24), RAY_TRAIN_V2_ENABLED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    log = open(tmp_path / "head.log", "w")
    cmd = _ray(
        "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
        "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}", "--disable-usage-stats",
    )  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            request = urllib.request.Request(
                f"{url}/api/version", headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
            )
            try:
                urllib.request.urlopen(request, timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        "the Ray head did not start:\n" + (tmp_path / "head.log").read_text()[-3000:]
                    ) from None
                time.sleep(1)
        yield url, env
    finally:
        _stop_head(proc, temp_dir)


def test_ray_job_submit_runs_a_micro_experiment(head, tmp_path):
    url, env = head
    raw = micro_config(num_workers=1, steps=10, warmup={"steps": 10, "size": 256, "lr": 3e-3})
    raw["selectors"] = [{"name": "random"}]
    cfg_path, out = tmp_path / "micro.yaml", tmp_path / "out"
    cfg_path.write_text(yaml.safe_dump(raw))
    sid = f"lhas-e2e-{secrets.token_hex(3)}"
    entry = [sys.executable, "-m", "lhas_ray.cli", "run", str(cfg_path), "--output", str(out), "--ray-address", "auto"]
    submit = _ray(
        "job", "submit", "--address", url, "--submission-id", sid,
        "--runtime-env", "clusters/runtime_env.yaml", "--", *entry, "--no-report",
    )  # fmt: skip
    done = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower() and "after stage 2" in logs  # the run's closing accuracy table, via the job logs

    store = ResultStore(str(out))  # the output contract
    assert store.is_run() and {u.stage for u in store.committed_units()} == {0, 1, 2}
    metrics = store.read_table("metrics").to_pandas()
    assert set(metrics.selector) == {"random"} and {"accuracy", "loss"} <= set(metrics.metric)
    assert store.read_table("curves") is not None and store.read_table("timings") is not None
    assert (out / "selections" / "random" / "s0" / "stage2.parquet").exists()
    assert (out / "checkpoints" / "random" / "s0" / "stage2" / "model.safetensors").exists()

    # scripts/submit.py against the real Jobs API: the same id has succeeded, so nothing is resubmitted
    again = [
        sys.executable,
        "scripts/submit.py",
        "--address",
        url,
        "--name",
        sid,
        "--",
        "run",
        str(cfg_path),
        "-o",
        str(out),
    ]
    done = subprocess.run(again, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"job {sid}: done" in done.stdout, done.stdout + done.stderr
