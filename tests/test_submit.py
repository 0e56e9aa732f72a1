"""scripts/submit.py against a stand-in Jobs API: stable ids, the entrypoint, the working_dir and its excludes,
resubmission after a failure, attaching to a running job, log tailing, --no-wait, and bad configs never sent."""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("submit", REPO / "scripts" / "submit.py")
submit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(submit)

TUNE = ["tune", "clusters/experiments/lhas_gpu.yaml", "--space", "search_spaces/lhas_default.yaml", "--trials", "8"]


class FakeJobs:
    """The JobSubmissionClient calls submit.py makes, recorded; jobs finish with ``final`` status."""

    def __init__(self, address: str, jobs: dict | None = None, final: str = "SUCCEEDED"):
        self.address, self.jobs, self.final = address, dict(jobs or {}), final
        self.submitted: list[dict] = []
        self.deleted: list[str] = []

    def get_job_status(self, sid):
        if sid not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return self.jobs[sid]

    def delete_job(self, sid):
        self.deleted.append(sid)
        del self.jobs[sid]

    def submit_job(self, **kw):
        self.submitted.append(kw)
        self.jobs[kw["submission_id"]] = "RUNNING"
        return kw["submission_id"]

    async def tail_job_logs(self, sid):
        for line in ("trial t001 started\n", "sweep finished\n"):
            yield line
        self.jobs[sid] = self.final


def run(argv, jobs=None, final="SUCCEEDED"):
    clients = []

    def factory(address):
        clients.append(FakeJobs(address, jobs, final))
        return clients[-1]

    code = submit.main(argv, client_factory=factory)
    return code, clients[0]


def test_submits_a_tune_sweep_and_tails_its_logs(capsys):
    code, client = run(["--address", "http://127.0.0.1:18265", "--output-root", "s3://b/runs", "--", *TUNE])
    assert code == 0 and client.address == "http://127.0.0.1:18265"
    (job,) = client.submitted
    sid = job["submission_id"]
    assert sid.startswith("lhas-tune-lhas-gpu-") and job["metadata"] == {"run_name": sid}
    cmd = shlex.split(job["entrypoint"])
    assert cmd[:5] == ["python", "-m", "lhas_ray.cli", "tune", "clusters/experiments/lhas_gpu.yaml"]
    assert cmd[cmd.index("--output") + 1] == f"s3://b/runs/{sid}"  # the id doubles as the run name
    assert cmd[cmd.index("--ray-address") + 1] == "auto"
    env = job["runtime_env"]
    assert env["working_dir"] == str(REPO) and env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert {".venv/", "outputs/", "checkpoints/", ".git/"} <= set(env["excludes"])
    out = capsys.readouterr().out
    assert "sweep finished" in out and f"job {sid}: SUCCEEDED" in out


def test_the_same_command_gets_the_same_id_and_resubmission_resumes():
    a = submit.submission_id(TUNE, "s3://b/runs")
    assert a == submit.submission_id(list(TUNE), "s3://b/runs")
    assert a != submit.submission_id([*TUNE[:-1], "9"], "s3://b/runs")
    # the first attempt failed (a spot head was lost...): same id, old record deleted, same output folder
    code, client = run(["--output-root", "s3://b/runs", "--", *TUNE], jobs={a: "FAILED"})
    assert code == 0 and client.deleted == [a] and client.submitted[0]["submission_id"] == a
    assert f"s3://b/runs/{a}" in client.submitted[0]["entrypoint"]


def test_a_running_job_is_followed_not_resubmitted_and_a_finished_one_is_left_alone(capsys):
    sid = "lhas-sweep-001"
    code, client = run(["--name", sid, "--", *TUNE, "--output", "s3://b/x"], jobs={sid: "RUNNING"})
    assert code == 0 and client.submitted == [] and "attached" in capsys.readouterr().out
    code, client = run(["--name", sid, "--", *TUNE, "--output", "s3://b/x"], jobs={sid: "SUCCEEDED"})
    assert code == 0 and client.submitted == [] and "--rerun" in capsys.readouterr().out
    code, client = run(["--name", sid, "--rerun", "--", *TUNE, "--output", "s3://b/x"], jobs={sid: "SUCCEEDED"})
    assert client.deleted == [sid] and len(client.submitted) == 1
    assert "--output s3://b/x" in client.submitted[0]["entrypoint"]  # an explicit --output is kept


def test_no_wait_returns_at_once_and_a_failed_job_exits_1(capsys):
    code, client = run(["--no-wait", "--output-root", "/shared/runs", "--", "run", "demo"])
    assert code == 0 and "ray job logs -f lhas-run-demo-" in capsys.readouterr().out
    code, _ = run(["--output-root", "/shared/runs", "--", "run", "demo"], final="FAILED")
    assert code == 1


def test_a_bad_config_is_never_submitted(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(["--output-root", "/r", "--", *TUNE, "--set", "training.lr=-1"])
    assert e.value.code == 2 and "training.lr" in capsys.readouterr().err
    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump({"params": {"l_q": {"type": "uniform", "low": 0, "high": 1}}}))
    with pytest.raises(SystemExit) as e:
        run(["--output-root", "/r", "--", "tune", "clusters/experiments/lhas_gpu.yaml", "--space", str(bad)])
    assert e.value.code == 2 and "params.l_q" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--output-root"):
        run(["--", "run", "demo"])  # nowhere to write


def test_runtime_env_file_is_what_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = submit.runtime_env(str(REPO / "clusters" / "runtime_env.yaml"), str(REPO))
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert os.path.isabs(env["working_dir"])
