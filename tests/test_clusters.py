"""clusters/: every file parses; the `ray up` configs pass Ray's own schema; KubeRay manifests autoscale, keep token
authentication on and never expose the dashboard; every entrypoint names an experiment config (and search space)
that loads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from lhas_ray.config import load_config
from lhas_ray.tuning.space import load_search_space

REPO = Path(__file__).resolve().parent.parent
CLUSTERS = REPO / "clusters"
RAY_UP = [CLUSTERS / "aws.yaml", CLUSTERS / "gcp.yaml"]


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_file_parses():
    files = sorted(CLUSTERS.rglob("*.yaml"))
    assert {f.relative_to(CLUSTERS).as_posix() for f in files} >= {
        "aws.yaml",
        "gcp.yaml",
        "runtime_env.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "experiments/lhas_gpu.yaml",
    }
    for f in files:
        assert _docs(f), f


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_configs_pass_rays_schema_and_stay_private(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _docs(path)[0]
    validate_config(prepare_config(raw))  # what `ray up` checks before it touches the cloud
    nodes = raw["available_node_types"]
    head, workers = nodes[raw["head_node_type"]], [v for k, v in nodes.items() if k != raw["head_node_type"]]
    assert raw["provider"]["type"] in ("aws", "gcp")

    def spot(node: dict) -> bool:
        cfg = node["node_config"]
        return cfg.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or (
            cfg.get("scheduling", {}).get("provisioningModel") == "SPOT"
        )

    assert not spot(head)  # the head is on-demand
    assert workers and all(
        spot(w) and w.get("min_workers", 0) == 0 and w["resources"].get("GPU", 0) >= 1 for w in workers
    )
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for commands in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        assert all("RAY_AUTH_MODE=token" in c for c in commands if "ray start" in c)
    assert "~/.ray/auth_token" in raw["file_mounts"]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_autoscale_with_token_auth_and_a_private_dashboard(name):
    path = CLUSTERS / "kuberay" / name
    (doc,) = _docs(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = _cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and {"name": "RAY_TRAIN_V2_ENABLED", "value": "1"} in head["env"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    text = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
    assert not re.search(r"LoadBalancer|NodePort|kind:\s*Ingress", text)


def test_rayjob_runtime_env_and_stable_id():
    from ray.runtime_env import RuntimeEnv

    (doc,) = _docs(CLUSTERS / "kuberay" / "rayjob.yaml")
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert "://" in env["working_dir"] and env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    job_id = doc["spec"]["jobId"]
    out = shlex.split(doc["spec"]["entrypoint"])
    assert out[out.index("--output") + 1].endswith("/" + job_id)  # the submission id doubles as the run name
    assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_runtime_env_excludes_outputs_checkpoints_and_the_venv():
    from ray.runtime_env import RuntimeEnv

    env = _docs(CLUSTERS / "runtime_env.yaml")[0]
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    assert {".venv/", "outputs/", "checkpoints/"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def _commands() -> list[tuple[str, list[str]]]:
    """Every lhas-ray command named in clusters/: RayJob entrypoints and the README's shell lines."""
    found = []
    for doc in _docs(CLUSTERS / "kuberay" / "rayjob.yaml"):
        found.append(("rayjob.yaml", shlex.split(doc["spec"]["entrypoint"])))
    text = (CLUSTERS / "README.md").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #")[0]
        if re.search(r"lhas_ray\.cli (run|tune)|submit\.py .*-- +(run|tune)", line):
            found.append(("README.md", shlex.split(line)))
    return found


def test_every_entrypoint_names_a_config_that_loads():
    commands = _commands()
    assert len(commands) >= 4
    for source, argv in commands:
        start = argv.index("lhas_ray.cli") + 1 if "lhas_ray.cli" in argv else argv.index("--") + 1
        cmd = argv[start:]
        config = cmd[1]
        overrides = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--set"]
        cfg = load_config(REPO / config, overrides)
        if cmd[0] == "tune":
            space = cmd[cmd.index("--space") + 1] if "--space" in cmd else cfg.tune.space
            assert load_search_space(space).params, (source, cmd)  # as the job resolves it: relative to its working dir


def test_the_local_autoscaling_rehearsal_passes_rays_schema():
    from ray.autoscaler._private.util import validate_config

    raw = _docs(CLUSTERS / "local_autoscale.yaml")[0]
    validate_config(raw)  # the whole file (prepare_config would merge the provider's defaults, not in Ray's wheel)
    assert raw["provider"]["type"] == "fake_multinode"
    nodes = raw["available_node_types"]
    assert nodes[raw["head_node_type"]]["resources"]["CPU"] == 0  # as aws.yaml's head: training needs a new node
    workers = [v for k, v in nodes.items() if k != raw["head_node_type"]]
    assert workers and all(w["min_workers"] == 0 and w["resources"]["CPU"] >= 1 for w in workers)
