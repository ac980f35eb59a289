"""Job-scoped credentials (avatar_job.credentials) against S3 on moto_server and a stand-in mint.

The mint function is a Lambda of the TypeScript side; here a local HTTP server plays it, speaking the
Lambda Invoke REST API (`POST /2015-03-31/functions/<name>/invocations`) that boto3 reaches through
AWS_ENDPOINT_URL_LAMBDA. It is a stand-in, not the real mint: it checks no secret and signs nothing;
it answers as the mint's contract says (credentials, a MintRefused function error, a transient
failure) and records what it was asked, so the tests see what the containers send and use.
"""

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.config import Config

from avatar_job import Job, credentials, layout, run_stage
from avatar_job.credentials import CredentialsError, MintCredentials, job_session

SECRET = "job-secret-5f0c9d2e-never-printed"
FUNCTION = "avatar-mint-test"


class StandInMint:
    """Answers each invoke with the next of `answers` (the last one repeats)."""

    def __init__(self, clock):
        self.clock, self.calls, self.answers = clock, [], ["ok"]
        self.lifetime = timedelta(hours=1)
        mint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                mint.calls.append({"path": self.path, "payload": json.loads(body), "authorization": self.headers["Authorization"]})
                answer = mint.answers[min(len(mint.calls), len(mint.answers)) - 1]
                status, headers, doc = 200, {}, None
                if answer == "ok":
                    n = len(mint.calls)
                    doc = {
                        "accessKeyId": f"ASIAMINTED{n:04d}",
                        "secretAccessKey": f"minted-secret-{n}",
                        "sessionToken": f"minted-token-{n}",
                        "expiration": (mint.clock() + mint.lifetime).isoformat().replace("+00:00", "Z"),
                    }
                elif answer == "naive":  # an expiration without a time zone: unusable
                    doc = {
                        "accessKeyId": "ASIANAIVE",
                        "secretAccessKey": "minted-secret-naive",
                        "sessionToken": "t",
                        "expiration": "2030-01-01T00:00:00",
                    }
                elif answer == "refuse":
                    headers["X-Amz-Function-Error"] = "Unhandled"
                    doc = {"errorType": "MintRefused", "errorMessage": "job recipe-25 of team-a is not running the train stage"}
                elif answer == "crash":
                    headers["X-Amz-Function-Error"] = "Unhandled"
                    doc = {"errorType": "Error", "errorMessage": "STS AssumeRole timed out"}
                elif answer == "throttle":
                    status, headers["x-amzn-ErrorType"], doc = 429, "TooManyRequestsException", {"message": "Rate exceeded", "Type": "User"}
                out = json.dumps(doc).encode()
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(out))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payloads(self):
        return [c["payload"] for c in self.calls]


class Clock:
    """The credentials' idea of now, moved by the test instead of by waiting."""

    def __init__(self):
        self.now = datetime.now(UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def mint(job_env, monkeypatch):
    clock = Clock()
    stand_in = StandInMint(clock)
    stand_in.bucket = job_env["AVATAR_ARTIFACTS_BUCKET"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", stand_in.url)
    monkeypatch.setenv("AVATAR_MINT_FUNCTION", FUNCTION)
    monkeypatch.setenv("AVATAR_JOB_SECRET", SECRET)
    yield stand_in
    stand_in.server.shutdown()


def _signed_with(client) -> list[tuple[str, str | None]]:
    """(access key, session token) of every request the client sends, read off the signed request."""
    seen = []

    def capture(request, **_):
        auth = (
            request.headers["Authorization"].decode()
            if isinstance(request.headers["Authorization"], bytes)
            else request.headers["Authorization"]
        )
        token = request.headers.get("X-Amz-Security-Token")
        seen.append((auth.split("Credential=")[1].split("/")[0], token.decode() if isinstance(token, bytes) else token))

    client.meta.events.register("before-send.s3", capture)
    return seen


def test_with_a_mint_function_every_s3_call_is_signed_with_the_minted_credentials(mint):
    job = Job.from_env("train")
    seen = _signed_with(job.s3)
    job.put_json(layout.STATUS, {"probe": 1})
    assert json.loads(job.get_bytes(layout.STATUS)) == {"probe": 1}
    assert job.list("") == [layout.STATUS]
    assert seen == [("ASIAMINTED0001", "minted-token-1")] * 3
    # One invoke, of the named function, with this job's ids and secret, signed with the ambient
    # (task role) credentials: the job's S3 credentials never sign their own renewal.
    assert [c["path"] for c in mint.calls] == [f"/2015-03-31/functions/{FUNCTION}/invocations"]
    assert mint.payloads() == [{"stage": "train", "teamId": "team-a", "jobId": "recipe-25", "secret": SECRET}]
    assert "Credential=testing/" in mint.calls[0]["authorization"]


@pytest.mark.parametrize(("stage", "asked"), [("caption", "train"), ("train", "train"), ("evaluate", "evaluate")])
def test_each_stage_asks_for_its_batch_jobs_credentials(mint, stage, asked):
    job_session(stage)
    assert [p["stage"] for p in mint.payloads()] == [asked]


def test_credentials_near_their_expiry_are_minted_again(mint):
    clock = mint.clock
    s3 = job_session("train", clock=clock).client("s3")
    seen = _signed_with(s3)
    bucket = mint.bucket
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    clock.now += timedelta(minutes=44)  # 16 min left: outside botocore's 15 min advisory window
    s3.get_object(Bucket=bucket, Key="k")
    assert len(mint.calls) == 1
    clock.now += timedelta(minutes=2)  # 14 min left: refreshed before the next call is signed
    s3.get_object(Bucket=bucket, Key="k")
    clock.now += timedelta(minutes=30)  # past the first expiry, 30 min before the second
    s3.get_object(Bucket=bucket, Key="k")
    assert seen == [("ASIAMINTED0001", "minted-token-1")] * 2 + [("ASIAMINTED0002", "minted-token-2")] * 2
    assert len(mint.calls) == 2 and mint.payloads()[0] == mint.payloads()[1]


def test_transient_mint_failures_are_retried_with_backoff(mint):
    mint.answers = ["crash", "throttle", "ok"]
    waits = []
    # One attempt per invoke, so the client's own throttling retries do not wait here in real time.
    client = credentials.boto3.Session().client("lambda", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    session = job_session("evaluate", mint=MintCredentials(FUNCTION, "evaluate", client=client, sleep=waits.append))
    assert session.get_credentials().get_frozen_credentials().access_key == "ASIAMINTED0003"
    assert len(waits) == 2 and 1.0 <= waits[0] <= 1.5 and 2.0 <= waits[1] <= 3.0

    mint.calls.clear()
    mint.answers = ["crash"]
    with pytest.raises(CredentialsError) as e:
        job_session("evaluate", mint=MintCredentials(FUNCTION, "evaluate", client=client, sleep=waits.append))
    assert e.value.code == "CREDENTIALS_UNAVAILABLE" and len(mint.calls) == credentials.MINT_ATTEMPTS
    assert "retry the job" in e.value.message and SECRET not in str(e.value)

    mint.answers = ["naive"]
    with pytest.raises(CredentialsError) as e:
        job_session("evaluate", mint=MintCredentials(FUNCTION, "evaluate", client=client, sleep=waits.append))
    assert e.value.code == "CREDENTIALS_UNAVAILABLE" and "ISO-8601 expiration" in e.value.message
    assert "minted-secret" not in str(e.value)


def test_a_refusal_on_renewal_ends_s3_access_and_is_not_asked_again(mint, caplog):
    clock = mint.clock
    s3 = job_session("train", clock=clock).client("s3")
    bucket = mint.bucket
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    mint.answers = ["ok", "refuse"]
    clock.now += timedelta(minutes=55)  # mandatory window: the call waits for new credentials
    with pytest.raises(CredentialsError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert e.value.code == "CREDENTIALS_REFUSED" and "submit the job again" in e.value.message
    with pytest.raises(CredentialsError):
        s3.get_object(Bucket=bucket, Key="k")
    assert len(mint.calls) == 2  # the refusal is final: no third invoke
    assert SECRET not in caplog.text + str(e.value) and "minted-secret" not in caplog.text


def test_a_refusal_mid_stage_ends_it_with_the_stable_code_and_no_status_write(mint, capsys, caplog):
    # Credentials 9 min from expiry: botocore renews them before every call (its mandatory window).
    mint.lifetime = timedelta(minutes=9)
    mint.clock.now = datetime.now(UTC)
    ran = []

    def body(job, status):
        mint.answers = ["refuse"]  # the workflow cancelled the job meanwhile
        ran.append(True)
        job.put_bytes("train/probe", b"1")
        ran.append("unreachable")

    assert run_stage("train", body) == credentials.EXIT_NO_CREDENTIALS and ran == [True]
    err = capsys.readouterr().err
    assert "train failed: CREDENTIALS_REFUSED" in err and "submit the job again" in err
    assert SECRET not in err + caplog.text
    # The status stays as last written: only the workflow can record the failure now.
    s3 = credentials.boto3.client("s3")
    status = json.loads(s3.get_object(Bucket=mint.bucket, Key=layout.job_prefix("team-a", "recipe-25") + layout.STATUS)["Body"].read())
    assert (status["state"], status["progress"]["message"]) == ("running", "train starting")


def _stage(module, command, env):
    return subprocess.run([sys.executable, "-m", module, command], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("module", "command", "asked"), [("captioner", "run", "train"), ("trainer", "evaluate", "evaluate")])
def test_a_refused_mint_fails_the_stage_with_a_stable_code_and_never_prints_the_secret(mint, module, command, asked):
    import os

    mint.answers = ["refuse"]
    run = _stage(module, command, dict(os.environ))
    assert run.returncode == credentials.EXIT_NO_CREDENTIALS, run.stderr[-3000:]
    assert "CREDENTIALS_REFUSED" in run.stderr and "submit the job again" in run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert mint.payloads() == [{"stage": asked, "teamId": "team-a", "jobId": "recipe-25", "secret": SECRET}]
    # Without S3 access there was nothing it could write: the workflow's mark-failed reports it.
    s3 = credentials.boto3.client("s3")
    assert "Contents" not in s3.list_objects_v2(Bucket=mint.bucket)


def test_without_a_mint_function_the_ambient_credentials_are_used_and_nothing_is_invoked(mint, monkeypatch):
    monkeypatch.delenv("AVATAR_MINT_FUNCTION")
    job = Job.from_env("train")
    seen = _signed_with(job.s3)
    job.put_json(layout.STATUS, {"probe": 1})
    assert json.loads(job.get_bytes(layout.STATUS)) == {"probe": 1}
    assert [key for key, _ in seen] == ["testing", "testing"] and mint.calls == []


def test_the_secret_missing_from_the_env_is_a_clear_error(mint, monkeypatch):
    monkeypatch.delenv("AVATAR_JOB_SECRET")
    with pytest.raises(CredentialsError) as e:
        Job.from_env("train")
    assert e.value.code == "CREDENTIALS_UNAVAILABLE" and "AVATAR_JOB_SECRET" in e.value.message and mint.calls == []
