"""A local Ray instance that keeps to itself when other Ray instances run on the same machine."""

from __future__ import annotations

import os
import socket

import ray


def start_local_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """``ray.init`` a local instance whose processes know their own dashboard (bound to 127.0.0.1).

    Ray Train's placement-group cleaner asks the dashboard's state API whether a run's controller is alive. Left to
    auto-detect "the" local Ray, it fails or finds another instance when several run on one machine (a test suite
    beside a demo), takes the controller for dead, and removes the placement group of a healthy run. Pinning the API
    address for every process of this job (``RAY_API_SERVER_ADDRESS``) makes it ask this instance. A local instance
    has no preemptible nodes, so Ray Train's preemption watcher (one more process per ``fit()``) is off unless the
    environment sets ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``.
    """
    port = _free_port()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=log_to_driver,
        runtime_env={
            "env_vars": {
                "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
            }
        },
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
