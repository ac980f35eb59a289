"""One Batch job, two stages: `python -m avatar_job caption train` against S3 on moto_server, with a
tiny BLIP and the kohya stand-in; and the retry of that job, which does not caption again."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from PIL import Image

from conftest import HERE, REPO, status_doc
from tiny_blip import save_tiny_blip

PREFIX = "teams/team-a/jobs/recipe-25/"
FAKE_KOHYA = HERE / "trainer/tests/fake_kohya.py"
BASE_KEY = "models/sd15-test.safetensors"


def small_plan():
    plan = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
    plan["images"] = ["anantn-01.png", "anantn-02.png", "anantn-03.png"]
    plan["userCaptions"] = []
    plan["plan"].update(
        numImages=3,
        repeats=2,
        epochs=2,
        totalSteps=12,
        folder="2_anantn",
        arithmetic="3 images x 2 repeats x 2 epochs / batch 1 = 12 steps (target 1875)",
    )
    plan["spec"]["training"].update(networkDim=8, networkAlpha=4)
    plan["spec"]["captioning"].update(numBeams=1, minLength=3, maxLength=8)
    return plan


@pytest.fixture
def seeded(job_env, tmp_path_factory, tmp_path):
    s3, bucket = boto3.client("s3"), job_env["AVATAR_ARTIFACTS_BUCKET"]
    plan = small_plan()
    s3.put_object(Bucket=bucket, Key=PREFIX + "normalize/plan.json", Body=json.dumps(plan))
    s3.put_object(
        Bucket=bucket,
        Key=PREFIX + "status.json",
        Body=json.dumps(status_doc("normalize")),
    )
    for i, name in enumerate(plan["images"]):
        buf = io.BytesIO()
        Image.new("RGB", (48, 64), (70 * i, 90, 120)).save(buf, "PNG")
        s3.put_object(Bucket=bucket, Key=PREFIX + f"normalize/2_anantn/{name}", Body=buf.getvalue())
    model = os.urandom(4096)
    # The operator uploads the base model with its sha256 in the object's metadata (README, Deploy).
    s3.put_object(Bucket=bucket, Key=BASE_KEY, Body=model, Metadata={"sha256": hashlib.sha256(model).hexdigest()})
    env = {
        **os.environ,
        **job_env,
        "AVATAR_BASE_MODEL_KEY": BASE_KEY,
        "AVATAR_BLIP_MODEL_DIR": str(save_tiny_blip(tmp_path_factory.mktemp("blip"))),
        "AVATAR_KOHYA_CMD": f"{sys.executable} {FAKE_KOHYA}",
        "FAKE_KOHYA_ARGS_LOG": str(tmp_path / "kohya-args.jsonl"),
    }
    return s3, bucket, env, tmp_path


def _job(env, tmp_path, attempt, **extra):
    return subprocess.run(
        [sys.executable, "-m", "avatar_job", "caption", "train"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "AVATAR_WORK_DIR": str(tmp_path / f"work-{attempt}"), **extra},
    )


def _keys(s3, bucket, sub):
    return sorted(o["Key"][len(PREFIX) :] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + sub).get("Contents", []))


def test_caption_then_train_in_one_job_and_a_retry_resumes_without_captioning_again(seeded):
    s3, bucket, env, tmp = seeded
    # Attempt 1: captions everything, trains epoch 1, then Batch stops the job (SIGTERM, as on a Spot
    # reclaim) while the stand-in is in epoch 2. The SIGTERM goes to the sequencer, which passes it on.
    first = subprocess.Popen(
        [sys.executable, "-m", "avatar_job", "caption", "train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "AVATAR_WORK_DIR": str(tmp / "work-1"), "FAKE_KOHYA_HANG_AFTER_EPOCH": "1"},
    )
    deadline = time.time() + 240
    while "train/anantn-000001.safetensors" not in _keys(s3, bucket, "train/"):
        assert first.poll() is None and time.time() < deadline, "epoch 1 was never published"
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    # Attempt 1 of 3: Batch retries a Spot reclaim, so the status stays running and says so.
    assert first.returncode == 143, out[-2000:] + err[-2000:]
    assert "avatar_job: train exited with 143" in err
    status = json.loads(s3.get_object(Bucket=bucket, Key=PREFIX + "status.json")["Body"].read())
    assert (status["stage"], status["state"]) == ("train", "running")
    assert status["progress"]["message"].startswith("interrupted (attempt 1 of 3); Batch retries")
    captions = {k: s3.get_object(Bucket=bucket, Key=PREFIX + k) for k in _keys(s3, bucket, "caption/")}
    assert sorted(captions) == [
        "caption/2_anantn/anantn-01.txt",
        "caption/2_anantn/anantn-02.txt",
        "caption/2_anantn/anantn-03.txt",
        "caption/captions.json",
    ]

    # Attempt 2 (Batch's retry of the same job): BLIP must not run again, so a broken BLIP folder is harmless.
    second = _job(env, tmp, 2, AVATAR_BLIP_MODEL_DIR=str(tmp / "no-blip-here"), AWS_BATCH_JOB_ATTEMPT="2")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "caption: caption/captions.json already covers the 3 images of this plan; not captioning again" in second.stdout
    for key, before in captions.items():
        assert s3.get_object(Bucket=bucket, Key=PREFIX + key)["ETag"] == before["ETag"], f"{key} was rewritten"
    assert {"train/anantn-000001.safetensors", "train/anantn.safetensors"} <= set(_keys(s3, bucket, "train/"))
    # kohya resumed from epoch 1's state instead of starting over.
    launches = [json.loads(line) for line in (tmp / "kohya-args.jsonl").read_text().splitlines()]
    assert len(launches) == 2 and "--resume" not in launches[0]
    resume = launches[1][launches[1].index("--resume") + 1]
    assert resume.endswith("anantn-000001-state")
    assert launches[1][launches[1].index("--initial_epoch") + 1] == "2"  # kohya counts on from epoch 2
    status = json.loads(s3.get_object(Bucket=bucket, Key=PREFIX + "status.json")["Body"].read())
    assert (status["stage"], status["state"], status["progress"]["fraction"]) == ("train", "running", 1.0)


def test_a_failed_caption_stops_the_job_before_training(seeded):
    s3, bucket, env, tmp = seeded
    result = _job(env, tmp, 1, AVATAR_BLIP_MODEL_DIR=str(tmp / "no-blip-here"))
    assert result.returncode == 1
    assert "avatar_job: caption exited with 1; not running train" in result.stderr
    status = json.loads(s3.get_object(Bucket=bucket, Key=PREFIX + "status.json")["Body"].read())
    assert (status["stage"], status["state"], status["error"]["code"]) == ("caption", "failed", "MODEL_MISSING")
    assert not (tmp / "kohya-args.jsonl").exists()  # kohya never started


def test_captions_of_another_plan_are_redone(seeded):
    s3, bucket, env, tmp = seeded
    stale = {
        "folder": "2_anantn",
        "prefix": "photo of anantn, ",
        "captions": [{"image": "anantn-01.png", "caption": "x", "source": "blip"}],
    }
    s3.put_object(Bucket=bucket, Key=PREFIX + "caption/captions.json", Body=json.dumps(stale))
    result = _job(env, tmp, 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not captioning again" not in result.stdout
    done = json.loads(s3.get_object(Bucket=bucket, Key=PREFIX + "caption/captions.json")["Body"].read())
    assert [c["image"] for c in done["captions"]] == small_plan()["images"]


def test_the_sequencer_accepts_only_known_stages_once():
    bad = subprocess.run([sys.executable, "-m", "avatar_job", "caption", "paint"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'paint'" in bad.stderr
    twice = subprocess.run([sys.executable, "-m", "avatar_job", "train", "train"], capture_output=True, text=True)
    assert twice.returncode == 2 and "each stage at most once" in twice.stderr
