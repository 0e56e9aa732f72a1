"""Autoscaling, rehearsed on one machine: a head that offers no CPUs, started with clusters/local_autoscale.yaml and
Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``, the provider Ray's own autoscaler tests use), token
authentication on. A 2-trial ``lhas-ray tune`` into ``s3://`` (the local S3 server) can only run once the autoscaler
has launched worker nodes; its two trials run at once, one on each launched node; when the sweep ends, the idle
nodes are removed after the config's idle timeout.

The cluster is this test's own (its ports, its temp dir, its process groups), as in test_job_submit.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from lhas_ray.store import ResultStore
from tests.helpers import sweep_config
from tests.local_cluster import free_ports, kill_under, ray_cli, start, stop_node, wait_for

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# the fake provider's node ids: the head is ffff...00000, the worker nodes it launches ffff...00001, ffff...00002, ...
FAKE_NODE_PREFIX = "f" * 51
FAKE_HEAD = FAKE_NODE_PREFIX + "00000"


def _alive_nodes(address: str, env: dict) -> list[dict] | None:
    """The cluster's alive nodes (id, resources), asked by a short-lived driver; None when it cannot connect."""
    code = (
        "import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False);"
        "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))"
    )
    cmd = [sys.executable, "-c", code, address]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory, s3_server):
    """The head of clusters/local_autoscale.yaml on a free port; yields (GCS address, env for drivers)."""
    (gcs,) = free_ports(1)
    tmp = tmp_path_factory.mktemp("autoscale")
    config = yaml.safe_load((REPO / "clusters" / "local_autoscale.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{gcs}"  # the committed file's default is this machine's :6379
    (tmp / "autoscale.yaml").write_text(yaml.safe_dump(config))
    temp_dir = tempfile.mkdtemp(prefix="lha-", dir="/tmp")  # short: Ray's unix sockets live under it
    (tmp / "ray_temp_dir").write_text(temp_dir)  # where the autoscaler's monitor.log is, for a failure to quote
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(s3_server, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(24), RAY_TRAIN_V2_ENABLED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head_cmd = ray_cli(
        "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
        "--num-cpus=0", f"--autoscaling-config={tmp / 'autoscale.yaml'}", "--include-dashboard=false",
        "--disable-usage-stats",
    )  # fmt: skip
    log = tmp / "head.log"
    procs = [start(head_cmd, head_env, log)]
    address = f"127.0.0.1:{gcs}"
    try:
        wait_for(lambda: _alive_nodes(address, env) is not None, "the autoscaling head starting", procs, [log])
        yield address, env, tmp
    finally:
        stop_node(procs[0])
        kill_under(temp_dir)


def test_a_sweep_makes_the_autoscaler_add_nodes_and_idle_ones_go(autoscaling_cluster, s3, tmp_path):
    address, env, tmp = autoscaling_cluster
    nodes = _alive_nodes(address, env)
    assert [n["id"] for n in nodes] == [FAKE_HEAD] and nodes[0]["resources"].get("CPU", 0) == 0  # no CPU to train on
    raw = sweep_config(heldout_seeds=[], max_concurrent=None)  # trials at once: what the autoscaler's maximum allows
    cfg_path, space_path, out = tmp_path / "c.yaml", tmp_path / "space.yaml", "s3://lhas-test/autoscaled-sweep"
    cfg_path.write_text(yaml.safe_dump(raw))
    space_path.write_text(yaml.safe_dump({"params": {"l_u": {"type": "uniform", "low": 0.1, "high": 2.0}}}))
    cmd = [sys.executable, "-m", "lhas_ray.cli", "tune", str(cfg_path), "--space", str(space_path), "-o", out]
    cmd += ["--no-report", "--ray-address", address]
    # the driver runs where `ray up` leaves the cluster config (~/ray_bootstrap_config.yaml on the head): Ray's v1
    # autoscaler publishes no maximum, so that file is what sizes the trials at once
    home = tmp_path / "head-home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text((tmp / "autoscale.yaml").read_text())
    done = subprocess.run(cmd, cwd=REPO, env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=600)
    logs = done.stdout + done.stderr
    assert done.returncode == 0 and "sweep finished" in logs, logs[-4000:] + (tmp / "head.log").read_text()[-2000:]
    assert "2 trials at a time (the autoscaler's maximum in ~/ray_bootstrap_config.yaml: 2 CPU)" in logs, logs[:3000]

    store = ResultStore(out)
    trials = store.read_parquet("trials.parquet").to_pandas()
    assert len(trials) == 2 and set(trials.status) == {"completed"}, trials
    ran_on, started, finished = set(), [], []
    for name in trials.trial:
        trial = ResultStore(f"{out}/trials/{name}")
        assert trial.is_run() and {u.stage for u in trial.committed_units()} == {0, 1, 2}
        workers = [json.loads(trial.read_bytes(f"_workers/{f}")) for f in trial.listdir("_workers")]
        ran_on |= {w["node_id"] for w in workers}
        started.append(min(w["started"] for w in workers))
        finished.append(trial.fs.get_file_info(trial.path("_committed", "lhas__s0__t2.json")).mtime.timestamp())
    # both trials' Train workers ran on nodes the autoscaler launched (the head has no CPU), one node each, at once
    # (the trials at once come from the autoscaler's maximum: max_concurrent is not set)
    assert len(ran_on) == 2 and all(n.startswith(FAKE_NODE_PREFIX) and n != FAKE_HEAD for n in ran_on), ran_on
    assert max(started) < min(finished), (started, finished)
    assert store.exists("best_config.yaml") and store.exists("_tune")

    # idle_timeout_minutes (0.25 in local_autoscale.yaml): the launched nodes are removed, the head stays (the
    # deadline is generous: on a loaded 2-core machine the autoscaler's loop and the nodes' shutdown both lag)
    deadline = time.time() + 240
    while time.time() < deadline:
        nodes = _alive_nodes(address, env) or []
        if [n["id"] for n in nodes if n["resources"].get("CPU", 0) > 0] == []:
            break
        time.sleep(3)
    monitor = Path((tmp / "ray_temp_dir").read_text()) / "session_latest" / "logs" / "monitor.log"
    why = "\n".join(line for line in monitor.read_text().splitlines() if "non-terminated nodes" not in line)[-4000:]
    assert [n["id"] for n in nodes] == [FAKE_HEAD], f"{nodes}\nthe autoscaler's monitor.log:\n{why}"
