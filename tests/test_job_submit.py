"""The real thing: a two-node Ray cluster on 127.0.0.1 with token authentication (``ray start --head``, then
``ray start --address``, one CPU and a custom resource naming each node), a micro ``lhas-ray run`` submitted with
``ray job submit`` (the repository as working_dir, clusters/runtime_env.yaml) whose results go to ``s3://`` on a local
S3 server (moto), its two Train workers one on each node; the output contract checked in the bucket, the results
compared with the same config's one-node run, the report written into the bucket, scripts/submit.py asked about the
same submission id, and the nodes stopped.

The cluster is this test's own: its own ports, its own --temp-dir (so no other Ray on the machine finds it and its
address file never replaces the default one), each node started in a new process group that is ended at the end, and
only processes running under that temp dir are ever killed. Ray jobs need the dashboard, which needs ``ray[default]``
(aiohttp ...): without it the test is skipped with that reason.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml

from lhas_ray.cli import main
from lhas_ray.store import ResultStore
from tests.local_cluster import free_ports, kill_under, node_ports, ray_cli, start, stop_node, wait_for

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("aiohttp") is None or importlib.util.find_spec("aiohttp_cors") is None,
        reason="`ray job submit` needs the Ray dashboard, i.e. ray[default] (aiohttp, aiohttp_cors, ...): not installed",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    """A head and a second node on 127.0.0.1, one CPU each, custom resources 'node_head' and 'node_second', token
    auth, the dashboard on 127.0.0.1, the S3 server's environment in every node; yields (dashboard URL, env, temp dir)."""
    gcs, dash, client = free_ports(3)
    temp_dir = tempfile.mkdtemp(prefix="lhr-", dir="/tmp")  # short: Ray's unix sockets live under it
    second_dir = tempfile.mkdtemp(prefix="lhr2-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(s3_server, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(24), RAY_TRAIN_V2_ENABLED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    head_cmd = ray_cli(
        "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
        "--num-cpus=1", '--resources={"node_head": 1}', "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--ray-client-server-port={client}", "--disable-usage-stats", *node_ports(),
    )  # fmt: skip
    tmp_path = tmp_path_factory.mktemp("cluster")
    logs = [tmp_path / "head.log", tmp_path / "second.log"]
    procs = [start(head_cmd, env, logs[0])]
    url = f"http://127.0.0.1:{dash}"
    auth = {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}

    def api(path: str):
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}{path}", headers=auth), timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    try:
        wait_for(lambda: api("/api/version") is not None, "the Ray head starting", procs, logs)

        # its own temp dir, as a second machine has: nodes sharing one would share runtime_resources/, and the
        # second node's clean-up of a finished trial's working_dir copy would delete the driver's working directory
        def two_nodes() -> bool:
            nodes = (api("/nodes?view=summary") or {}).get("data", {}).get("summary", [])
            return sum(n.get("raylet", {}).get("state") == "ALIVE" for n in nodes) == 2

        # `ray start` gives a joining raylet a fixed 30 s to register; on a loaded 2-core machine it has missed that
        # once (a fresh-clone suite run), so a node that gave up is started again, with fresh ports, twice at most
        for attempt in range(3):
            second_cmd = ray_cli(
                "start", "--block", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                '--resources={"node_second": 1}', f"--temp-dir={second_dir}", "--disable-usage-stats",
                *node_ports(),
            )  # fmt: skip
            procs.append(start(second_cmd, env, logs[1]))
            try:
                wait_for(two_nodes, "the second node joining", procs, logs)
                break
            except RuntimeError:
                if attempt == 2 or procs[0].poll() is not None:
                    raise
                stop_node(procs.pop())
        yield url, env, temp_dir
    finally:
        for proc in reversed(procs):
            stop_node(proc)
        kill_under(temp_dir)
        kill_under(second_dir)


def _submit(url: str, env: dict, sid: str, args: list[str], wait: bool = True) -> subprocess.CompletedProcess:
    entry = [sys.executable, "-m", "lhas_ray.cli", *args, "--ray-address", "auto"]
    cmd = ray_cli(
        "job", "submit", "--address", url, "--submission-id", sid, *([] if wait else ["--no-wait"]),
        "--runtime-env", "clusters/runtime_env.yaml", "--", *entry,
    )  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _mtimes(store: ResultStore, folder: str) -> dict[str, float]:
    infos = store.fs.get_file_info(pafs.FileSelector(store.path(folder), recursive=True))
    return {i.path: i.mtime.timestamp() for i in infos if i.type == pafs.FileType.File}


def test_ray_job_submit_on_two_nodes_into_s3_equals_the_one_node_run(cluster, s3, clean_run, tmp_path):
    """Submitted, stopped once stage 1 is in the bucket, resubmitted into the same folder: the same results as the
    one-node run, nothing committed before the stop redone; then the report, and scripts/submit.py on that job."""
    url, env, temp_dir = cluster
    cfg, clean_out = clean_run
    cfg_path, out = tmp_path / "micro.yaml", "s3://lhas-test/job-run"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    store = ResultStore(out)
    run = ["run", str(cfg_path), "--output", out, "--no-report"]

    first = f"lhas-e2e-{secrets.token_hex(3)}"
    assert _submit(url, env, first, run, wait=False).returncode == 0
    deadline = time.time() + 300
    while not store.exists("_committed", "random__s0__t1.json") and time.time() < deadline:
        time.sleep(0.5)
    stop = subprocess.run(ray_cli("job", "stop", "--address", url, first), env=env, capture_output=True, text=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    before = _mtimes(store, "_committed")
    assert store.path("_committed", "random__s0__t1.json") in before
    assert store.path("_committed", "loss_high__s0__t2.json") not in before, "the job ended before it was stopped"

    sid = f"lhas-e2e-{secrets.token_hex(3)}"
    done = _submit(url, env, sid, run)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower() and "after stage 2" in logs  # the run's closing accuracy table, via the job logs

    # the output contract, in the bucket; what was committed before the stop was not redone
    assert store.is_run() and {u.stage for u in store.committed_units()} == {0, 1, 2}
    after = _mtimes(store, "_committed")
    assert {p: after[p] for p in before} == before
    assert store.exists("selections", "random", "s0", "stage2.parquet")
    assert store.exists("checkpoints", "random", "s0", "stage2", "model.safetensors")
    assert store.read_table("curves") is not None and store.read_table("timings") is not None
    assert store.local_path() is None  # an object store: no logs folder, nothing local to point at
    # nothing landed on local disk under the output's name (a URI taken for a path would): not in the job's
    # working_dir copy, not in the repository
    assert not glob.glob(os.path.join(temp_dir, "**", "job-run"), recursive=True)
    assert not (REPO / "s3:").exists()

    # each node ran one of the two Train ranks
    placed = [json.loads(store.read_bytes(f"_workers/micro-group0-rank{r}.json")) for r in (0, 1)]
    assert len({p["node_id"] for p in placed}) == 2, placed

    # the same results as the one-node run of the same config, no row twice
    clean = ResultStore(clean_out)
    for sel in ("random", "loss_high"):
        for t in (1, 2):
            rel = f"selections/{sel}/s0/stage{t}.parquet"
            a = clean.read_parquet(rel).column("example_id").to_numpy()
            b = store.read_parquet(rel).column("example_id").to_numpy()
            np.testing.assert_array_equal(a, b, err_msg=rel)
    key = ["selector", "seed", "stage", "eval_set", "skill", "metric"]
    mine = store.read_table("metrics").to_pandas().sort_values(key).reset_index(drop=True)
    ref = clean.read_table("metrics").to_pandas().sort_values(key).reset_index(drop=True)
    assert not mine.duplicated(key).any() and mine[key].equals(ref[key])
    np.testing.assert_allclose(mine.value, ref.value, rtol=0, atol=1e-5)

    # the report reads and writes the bucket
    assert main(["report", out]) == 0
    assert store.exists("report.html") and store.exists("trajectory.parquet")

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
        out,
    ]
    done = subprocess.run(again, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"job {sid}: done" in done.stdout, done.stdout + done.stderr
