"""Helpers for the tests that start Ray clusters of their own on 127.0.0.1 (test_job_submit, test_autoscale): free
ports, `ray` CLI commands, node processes in their own process groups, and clean-up that only ever touches processes
running under the test's own temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ray_cli(*args: str) -> list[str]:
    """The `ray` command of this interpreter's Ray."""
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def start(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def node_ports() -> list[str]:
    """`ray start` flags giving every per-node port a free one (two nodes on one machine must not collide)."""
    agent, agent_grpc, metrics, runtime_env, node_manager, object_manager = free_ports(6)
    return [
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
    ]  # fmt: skip


def wait_for(check, what: str, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs)
            raise RuntimeError(f"{what} did not happen:\n{tails}")
        time.sleep(1)


def stop_node(proc: subprocess.Popen) -> None:
    """End a node's process group: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def kill_under(temp_dir: str) -> None:
    """Anything still running under the cluster's temp dir (this test's processes only), then the dir itself."""
    time.sleep(1)
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)
