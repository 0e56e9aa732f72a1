"""Shared fixtures: Ray is started once per session, sized for a 2-core machine."""

from __future__ import annotations

import os

import pytest

import lhas_ray  # noqa: F401  (sets RAY_TRAIN_V2_ENABLED before any test imports ray.train)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tracking tests use MLflow's file store (no database packages); MLflow 3 wants it opted into
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        from lhas_ray.local_ray import start_local_ray

        start_local_ray(num_cpus=2, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3-compatible server (moto's server mode) on 127.0.0.1 with one bucket; yields the AWS environment
    (endpoint, test credentials) that pyarrow, Ray Train and Ray Tune read, for subprocesses and ``monkeypatch``."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not start on {url}: see {log.name}") from None
            time.sleep(0.3)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="lhas-test")  # fmt: skip
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server's environment set in this process too (pyarrow reads it when a test opens an s3:// URI)."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory) -> str:
    """A model saved to a local path by the test, loaded by the protocol as 'any HF causal LM from a path'."""
    from lhas_ray.config import config_from_dict
    from lhas_ray.model import build_model, save_pretrained
    from tests.helpers import micro_config

    cfg = config_from_dict(micro_config()).model
    model, tok = build_model(cfg, seed=7)
    return save_pretrained(model, tok, str(tmp_path_factory.mktemp("hf") / "tiny"))


@pytest.fixture(scope="session")
def clean_run(ray_session, hf_model_dir, tmp_path_factory):
    """The micro protocol run once, uninterrupted, on this session's one-node Ray: the reference that resumed,
    object-store and two-node runs of the same config are compared with."""
    from lhas_ray.config import config_from_dict
    from lhas_ray.launch import run_experiment
    from tests.helpers import micro_config

    cfg = config_from_dict(micro_config(model_name=hf_model_dir))
    out = str(tmp_path_factory.mktemp("clean"))
    run_experiment(cfg, out)
    return cfg, out
