"""`python -m captioner run` end to end against S3 on moto_server, with a tiny BLIP."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import boto3
import jsonschema
import pytest
from PIL import Image

from conftest import CREATED, REPO, status_doc
from tiny_blip import save_tiny_blip

PLAN = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
SCHEMA = json.loads((REPO / "containers/common/src/avatar_job/contract.schema.json").read_text())
PREFIX = "teams/team-a/jobs/recipe-25/"


def _png(i):
    buf = io.BytesIO()
    Image.new("RGB", (48, 64), (10 * i, 200 - 5 * i, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip"))


def _seed(env, plan, images=None):
    s3 = boto3.client("s3")
    bucket = env["AVATAR_ARTIFACTS_BUCKET"]
    put = lambda key, body: s3.put_object(Bucket=bucket, Key=PREFIX + key, Body=body)
    put("normalize/plan.json", json.dumps(plan))
    put(
        "status.json",
        json.dumps(status_doc("normalize")),
    )
    for i, name in enumerate(plan["images"]):
        put(f"normalize/15_anantn/{name}", (images or {}).get(name, _png(i)))
    put("normalize/15_anantn/anantn-03.txt", "a man in a kitchen, close up\nsecond line is ignored by kohya\n")
    return s3, bucket


def _run(env, blip_dir):
    return subprocess.run(
        [sys.executable, "-m", "captioner", "run"],
        env={**os.environ, **env, "AVATAR_BLIP_MODEL_DIR": str(blip_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _get(s3, bucket, key):
    return s3.get_object(Bucket=bucket, Key=PREFIX + key)["Body"].read().decode()


def _status(s3, bucket):
    status = json.loads(_get(s3, bucket, "status.json"))
    jsonschema.validate(status, {"$ref": "#/$defs/Status", "$defs": SCHEMA["$defs"]})
    return status


def test_run_writes_a_prefixed_caption_for_every_image(job_env, blip_dir):
    plan = json.loads(json.dumps(PLAN))
    plan["spec"]["captioning"].update(numBeams=3, minLength=8, maxLength=16, commonTraits=["black hair"])
    s3, bucket = _seed(job_env, plan)

    result = _run(job_env, blip_dir)

    assert result.returncode == 0, result.stderr
    keys = {o["Key"][len(PREFIX) :] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "caption/")["Contents"]}
    assert keys == {f"caption/15_anantn/anantn-{i:02d}.txt" for i in range(1, 26)} | {"caption/captions.json"}
    assert _get(s3, bucket, "caption/15_anantn/anantn-03.txt") == "photo of anantn, a man in a kitchen, close up\n"
    blip_caption = _get(s3, bucket, "caption/15_anantn/anantn-01.txt")
    assert blip_caption.startswith("photo of anantn, ") and len(blip_caption.split()) > 5
    assert "black hair" not in blip_caption

    review = json.loads(_get(s3, bucket, "caption/captions.json"))
    assert review["folder"] == "15_anantn" and review["prefix"] == "photo of anantn, "
    assert [c["image"] for c in review["captions"]] == PLAN["images"]
    assert [c["source"] for c in review["captions"]].count("user") == 1
    assert review["captions"][0]["caption"] + "\n" == blip_caption

    status = _status(s3, bucket)
    assert (status["state"], status["stage"], status["createdAt"]) == ("running", "caption", CREATED)
    assert status["progress"]["fraction"] == 1.0


def test_an_invalid_plan_fails_with_the_offending_field(job_env, blip_dir):
    plan = json.loads(json.dumps(PLAN))
    plan["spec"]["captioning"]["numBeams"] = 50
    s3, bucket = _seed(job_env, plan)

    result = _run(job_env, blip_dir)

    assert result.returncode == 1
    status = _status(s3, bucket)
    assert (status["state"], status["stage"]) == ("failed", "caption")
    assert status["error"]["code"] == "INVALID_DATASETPLAN"
    assert "spec.captioning.numBeams" in status["error"]["message"]
    assert status["error"]["input"] == "normalize/plan.json"


def test_an_undecodable_image_fails_naming_it(job_env, blip_dir):
    plan = json.loads(json.dumps(PLAN))
    plan["spec"]["captioning"].update(numBeams=1, minLength=2, maxLength=6)
    s3, bucket = _seed(job_env, plan, images={"anantn-07.png": b"not a png"})

    result = _run(job_env, blip_dir)

    assert result.returncode == 1
    status = _status(s3, bucket)
    assert status["error"]["code"] == "BAD_IMAGE" and status["error"]["input"] == "anantn-07.png"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "caption/")


def _start_paused_in_blip(env, blip_dir, ready, attempt):
    """The real `python -m captioner run`, with BLIP's first batch followed by a long pause.

    The one patch: a Spot reclaim cannot be timed to land inside BLIP on a tiny model, so the pause
    holds the stage there until the test's SIGTERM.
    """
    code = (
        "import pathlib, sys, time\n"
        "from captioner import blip\n"
        "real = blip.Blip.caption\n"
        "def paused(self, images, s):\n"
        "    out = real(self, images, s)\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    time.sleep(120)\n"
        "    return out\n"
        "blip.Blip.caption = paused\n"
        "from captioner.__main__ import main\n"
        "sys.exit(main(['run']))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env, "AVATAR_BLIP_MODEL_DIR": str(blip_dir), "AWS_BATCH_JOB_ATTEMPT": str(attempt)},
    )


def _sigterm_in_blip(env, blip_dir, tmp_path, attempt):
    ready = tmp_path / f"in-blip-{attempt}"
    proc = _start_paused_in_blip(env, blip_dir, ready, attempt)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "BLIP never ran"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.stdout.read()[-3000:]


def test_a_spot_reclaim_mid_captioning_leaves_running_and_the_retry_finishes(job_env, blip_dir, tmp_path):
    plan = json.loads(json.dumps(PLAN))
    plan["spec"]["captioning"].update(numBeams=1, minLength=2, maxLength=6)
    s3, bucket = _seed(job_env, plan)

    _sigterm_in_blip(job_env, blip_dir, tmp_path, attempt=1)
    status = _status(s3, bucket)
    assert (status["state"], status["stage"]) == ("running", "caption") and "error" not in status
    assert status["progress"]["message"] == "interrupted (attempt 1 of 3); Batch retries and reruns the stage"
    assert status["progress"]["fraction"] == 0.05  # the last progress written ("loading BLIP")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "caption/")

    retry = subprocess.run(
        [sys.executable, "-m", "captioner", "run"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **job_env, "AVATAR_BLIP_MODEL_DIR": str(blip_dir), "AWS_BATCH_JOB_ATTEMPT": "2"},
    )
    assert retry.returncode == 0, retry.stderr[-3000:]
    status = _status(s3, bucket)
    assert status["state"] == "running" and status["progress"]["fraction"] == 1.0
    assert status["progress"]["message"].endswith("(attempt 2 of 3)")
    assert len(json.loads(_get(s3, bucket, "caption/captions.json"))["captions"]) == 25


def test_a_sigterm_on_the_last_attempt_fails_the_caption_stage(job_env, blip_dir, tmp_path):
    plan = json.loads(json.dumps(PLAN))
    plan["spec"]["captioning"].update(numBeams=1, minLength=2, maxLength=6)
    s3, bucket = _seed(job_env, plan)

    _sigterm_in_blip(job_env, blip_dir, tmp_path, attempt=3)
    status = _status(s3, bucket)
    assert (status["state"], status["stage"]) == ("failed", "caption")
    assert status["error"]["code"] == "INTERRUPTED" and "attempt 3 of 3" in status["error"]["message"]


def _stopped(state):
    """The terminal status the workflow writes for a stopped execution (mark-failed or reconcile)."""
    return status_doc("caption", state, finishedAt=CREATED, error={"code": "CANCELLED", "message": "the execution was stopped"})


def test_a_terminal_status_is_not_overwritten_by_an_interruption(job_env):
    """The workflow may mark the job failed first (a stopped execution terminates the Batch job)."""
    from avatar_job import Interrupted, Job, Status

    s3, bucket = _seed(job_env, json.loads(json.dumps(PLAN)))
    job = Job.from_env()
    status = Status(job, "caption", attempt=(1, 3))
    failed = _stopped("failed")
    s3.put_object(Bucket=bucket, Key=PREFIX + "status.json", Body=json.dumps(failed))
    status.interrupted(Interrupted())
    assert _status(s3, bucket) == failed


def test_progress_never_brings_a_cancelled_job_back_to_running(job_env):
    """reconcile writes `cancelled` while the stage still runs (TerminateJob's SIGTERM is on its way)."""
    from avatar_job import Job, Status

    s3, bucket = _seed(job_env, json.loads(json.dumps(PLAN)))
    job = Job.from_env()
    status = Status(job, "caption", attempt=(1, 3))
    assert status.progress(0.1, "captioning", force=True)
    cancelled = _stopped("cancelled")
    s3.put_object(Bucket=bucket, Key=PREFIX + "status.json", Body=json.dumps(cancelled))

    assert status.progress(0.5, "captioning", force=True) is False
    status.fail(__import__("avatar_job").StageError("CAPTION_FAILED", "late failure"))
    assert _status(s3, bucket) == cancelled


def test_a_terminal_write_between_the_read_and_the_write_wins(job_env):
    """The status write is conditional on the ETag it read: a terminal status written in between is
    seen on the retry (moto enforces IfMatch on PutObject) and left alone."""
    from avatar_job import Job, Status

    s3, bucket = _seed(job_env, json.loads(json.dumps(PLAN)))
    job = Job.from_env()
    status = Status(job, "caption", attempt=(1, 3))
    assert status.progress(0.1, "captioning", force=True)
    cancelled = _stopped("cancelled")
    real_get = job.s3.get_object
    raced = []

    def get_then_race(**kwargs):
        out = real_get(**kwargs)
        if not raced:  # the workflow writes right after this stage read the status
            raced.append(True)
            s3.put_object(Bucket=bucket, Key=PREFIX + "status.json", Body=json.dumps(cancelled))
        return out

    job.s3.get_object = get_then_race
    assert status.progress(0.5, "captioning", force=True) is False
    assert raced and _status(s3, bucket) == cancelled
