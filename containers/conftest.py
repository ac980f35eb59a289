"""Shared by both containers' tests: the packages on the path, and S3 served by moto_server on 127.0.0.1.

moto emulates S3's object API (put/get/list/multipart); it does not enforce IAM, so the tests
say nothing about the job role's permissions.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

HERE = Path(__file__).resolve().parent
# The images put common/src and their own src/ on PYTHONPATH; the tests do the same, and so do the
# subprocesses they start (`python -m trainer train`).
SRC = [str(HERE / "common/src"), str(HERE / "captioner/src"), str(HERE / "trainer/src")]
sys.path[:0] = SRC
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [*SRC, os.environ.get("PYTHONPATH")] if p)
REPO = HERE.parent


_CI = os.environ.get("CI") in ("true", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip fails: a CI machine that lacks a local component must not pass by skipping.

    Tests marked ``opt_in`` (they need something CI never has, such as a kohya checkout) still skip.
    """
    outcome = yield
    report = outcome.get_result()
    if _CI and report.skipped and item.get_closest_marker("opt_in") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{reason}. CI=true: a missing local component fails the run instead of skipping it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {url}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


CREATED = "2026-01-01T00:00:00.000Z"


def status_doc(stage: str, state: str = "running", **extra) -> dict:
    """A status.json of job_env's job, as the workflow leaves it when `stage` starts (or ends, with `state`)."""
    return {"teamId": "team-a", "jobId": "recipe-25", "state": state, "stage": stage, "createdAt": CREATED, "updatedAt": CREATED, **extra}


@pytest.fixture
def job_env(s3_endpoint, monkeypatch, tmp_path):
    """Env for one job run against fresh buckets; also applied to this process for direct calls."""
    suffix = str(time.time_ns())
    env = {
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AVATAR_TEAM_ID": "team-a",
        "AVATAR_JOB_ID": "recipe-25",
        "AVATAR_INBOX_BUCKET": f"inbox-{suffix}",
        "AVATAR_ARTIFACTS_BUCKET": f"artifacts-{suffix}",
        "AVATAR_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=env["AVATAR_INBOX_BUCKET"])
    s3.create_bucket(Bucket=env["AVATAR_ARTIFACTS_BUCKET"])
    return env
