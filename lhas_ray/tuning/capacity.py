"""How large the cluster can get: what decides how many trials (or trajectory groups) run at once.

An autoscaling cluster starts small (a head with no CPUs), so its resources now say nothing about how many trials
it can run. Ray's autoscaler v2 publishes its node types' maxima in the GCS; the v1 autoscaler that ``ray up``
starts does not, but ``ray up`` leaves the cluster's config on the head at ``~/ray_bootstrap_config.yaml``, where a
``ray job submit`` driver runs."""

from __future__ import annotations

import json
import logging
import os

import ray
import yaml

log = logging.getLogger("lhas_ray.tuning")
RAY_UP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the cluster config on the head
V1_STATUS_KEY = "__autoscaling_status"  # the v1 autoscaler's status in the GCS key-value store (`ray status`)


def config_max_resources(config: dict) -> dict[str, float]:
    """The resources of a ``ray up`` config's cluster at its largest: the head's, plus each worker type's resources
    times its ``max_workers`` (capped by the cluster's ``max_workers``)."""
    nodes = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    total: dict[str, float] = {}
    for name, node in nodes.items():
        count = 1 if name == head else min(node.get("max_workers", cap or 0), cap if cap is not None else 1 << 30)
        for key, value in (node.get("resources") or {}).items():
            total[key] = total.get(key, 0) + float(value) * count
    return total


def _published_maximum() -> dict[str, float] | None:
    try:  # a private API: any failure means "not published"
        from ray._private.state import state

        biggest = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001
        return None
    return dict(biggest) if biggest else None


def autoscaler_in_status(status: bytes | None) -> bool:
    """Whether the monitor's status (``V1_STATUS_KEY``) comes from an autoscaler that can add nodes. Every head runs
    the monitor, and without an autoscaling config it reports through Ray's read-only provider, whose node types are
    anonymous (``node_<node id>``); an autoscaling head maps its nodes to the node types of its config."""
    try:
        report = json.loads(status or b"{}").get("autoscaler_report") or {}
    except (ValueError, TypeError, AttributeError):
        return False
    mapping = report.get("node_type_mapping") or {}
    return any(kind != f"node_{node}" for node, kind in mapping.items())


def _has_v1_autoscaler() -> bool:
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        return autoscaler_in_status(_internal_kv_get(V1_STATUS_KEY))
    except Exception:  # noqa: BLE001
        return False


def max_cluster_resources(ray_up_config: str = RAY_UP_CONFIG) -> tuple[dict[str, float], str]:
    """The cluster's resources at its largest and where that figure came from (for the console line)."""
    published = _published_maximum()
    if published:
        return published, "the autoscaler's maximum"
    path = os.path.expanduser(ray_up_config)
    if os.path.isfile(path):
        try:
            biggest = config_max_resources(yaml.safe_load(open(path)) or {})
        except (yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
            log.warning("could not read the cluster config %s (%s); sizing from the resources there now", path, e)
        else:
            if biggest.get("CPU", 0) or biggest.get("GPU", 0):
                return biggest, f"the autoscaler's maximum in {ray_up_config}"
    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    if _has_v1_autoscaler():
        log.warning(
            "an autoscaler runs but its maximum is not known here (no %s, none published): trials at once are sized "
            "from the nodes there now; set tune.max_concurrent to use the nodes it can add",
            ray_up_config,
        )
    return now, "the cluster's resources now"
