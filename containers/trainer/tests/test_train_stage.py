"""`python -m trainer train` end to end against S3 on moto_server, with fake_kohya.py in kohya's place."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import jsonschema
import pytest
from PIL import Image

from conftest import REPO
from avatar_job import Job, StageError
from trainer.train import fetch_base_model
from trainer.verify import sha256

HERE = Path(__file__).resolve().parent
FIXTURE = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
SCHEMA = json.loads((REPO / "containers/common/src/avatar_job/contract.schema.json").read_text())
PREFIX = "teams/team-a/jobs/recipe-25/"
BASE_KEY = "models/sd15-test.safetensors"
EPOCHS = 4
NAMES = [f"anantn-{e:06d}.safetensors" for e in range(1, EPOCHS)] + ["anantn.safetensors"]


def small_plan():
    """3 images x 2 repeats x 4 epochs at dim 8: the recipe fixture, shrunk."""
    plan = json.loads(json.dumps(FIXTURE))
    plan["images"] = ["anantn-01.png", "anantn-02.png", "anantn-03.png"]
    plan["userCaptions"] = []
    plan["plan"].update(numImages=3, repeats=2, epochs=EPOCHS, totalSteps=24, folder="2_anantn",
                        arithmetic="3 images x 2 repeats x 4 epochs / batch 1 = 24 steps (target 1875)")
    plan["spec"]["training"].update(networkDim=8, networkAlpha=4)
    return plan


@pytest.fixture
def seeded(job_env, tmp_path):
    s3, bucket = boto3.client("s3"), job_env["AVATAR_ARTIFACTS_BUCKET"]
    put = lambda key, body: s3.put_object(Bucket=bucket, Key=key, Body=body)
    plan = small_plan()
    put(PREFIX + "normalize/plan.json", json.dumps(plan))
    put(PREFIX + "status.json", json.dumps({"teamId": "team-a", "jobId": "recipe-25", "state": "running", "stage": "caption",
                                            "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"}))
    for i, name in enumerate(plan["images"]):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (60 * i, 90, 120)).save(buf, "PNG")
        put(PREFIX + f"normalize/2_anantn/{name}", buf.getvalue())
        put(PREFIX + f"caption/2_anantn/{name[:-4]}.txt", f"photo of anantn, a man, picture {i}\n")
    base = os.urandom(4096)
    s3.put_object(Bucket=bucket, Key=BASE_KEY, Body=base, Metadata={"sha256": hashlib.sha256(base).hexdigest()})
    env = {**os.environ, **job_env, "AVATAR_BASE_MODEL_KEY": BASE_KEY,
           "AVATAR_KOHYA_CMD": f"{sys.executable} {HERE / 'fake_kohya.py'}",
           "FAKE_KOHYA_ARGS_LOG": str(tmp_path / "kohya-args.jsonl")}
    return s3, bucket, env, tmp_path


def _train(env, tmp_path, attempt=1, **extra):
    return subprocess.run([sys.executable, "-m", "trainer", "train"], capture_output=True, text=True, timeout=120,
                          env={**env, "AVATAR_WORK_DIR": str(tmp_path / f"work-{attempt}"), **extra})


def _keys(s3, bucket, sub):
    return sorted(o["Key"][len(PREFIX):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + sub).get("Contents", []))


def _json(s3, bucket, rel):
    return json.loads(s3.get_object(Bucket=bucket, Key=PREFIX + rel)["Body"].read())


def _status(s3, bucket):
    status = _json(s3, bucket, "status.json")
    jsonschema.validate(status, {"$ref": "#/$defs/Status", "$defs": SCHEMA["$defs"]})
    return status


def test_a_run_publishes_every_checkpoint_state_and_diary(seeded):
    s3, bucket, env, tmp = seeded
    result = _train(env, tmp)
    assert result.returncode == 0, result.stderr[-3000:]

    top = [k for k in _keys(s3, bucket, "train/") if k.count("/") == 1]
    assert top == sorted([f"train/{n}" for n in NAMES] + ["train/config.toml", "train/dataset.toml", "train/diary.json"])
    # Only the newest state is kept.
    assert {k.split("/")[2] for k in _keys(s3, bucket, "train/state/")} == {"anantn-state"}

    diary = _json(s3, bucket, "train/diary.json")
    assert [c["name"] for c in diary["checkpoints"]] == NAMES
    for c in diary["checkpoints"]:
        head = s3.head_object(Bucket=bucket, Key=PREFIX + "train/" + c["name"])
        assert head["Metadata"]["sha256"] == c["sha256"] and head["ContentLength"] == c["size"]
    assert sorted(diary["lossPerEpoch"]) == ["1", "2", "3", "4"]
    assert diary["lossPerEpoch"]["4"] < diary["lossPerEpoch"]["1"]
    assert diary["plan"]["totalSteps"] == 24 and diary["config"]["network_dim"] == 8
    assert diary["baseModel"]["key"] == BASE_KEY and len(diary["baseModel"]["sha256"]) == 64
    assert diary["versions"]["torch"] and "sdScriptsCommit" in diary["versions"]
    assert diary["attempts"][0]["resumedFrom"] is None

    status = _status(s3, bucket)
    assert (status["state"], status["stage"], status["createdAt"]) == ("running", "train", "2026-01-01T00:00:00.000Z")
    assert status["progress"]["fraction"] == 1.0 and status["progress"]["step"] == 24
    assert status["progress"]["epoch"] == 4 and status["progress"]["totalSteps"] == 24


def test_kohya_finding_no_images_is_no_output(seeded):
    s3, bucket, env, tmp = seeded
    result = _train(env, tmp, FAKE_KOHYA_SEE_NO_IMAGES="1")
    assert result.returncode == 1
    status = _status(s3, bucket)
    assert status["state"] == "failed" and status["error"]["code"] == "NO_OUTPUT"
    assert "no training images" in status["error"]["message"]


def test_nan_loss_stops_the_run_fast(seeded):
    s3, bucket, env, tmp = seeded
    # The stand-in hangs after epoch 1 unless stopped: the run returns at all only because the
    # trainer killed kohya at the NaN (step 3), so no wall-clock bound is needed.
    result = _train(env, tmp, FAKE_KOHYA_NAN_AT_STEP="3", FAKE_KOHYA_HANG_AFTER_EPOCH="1")
    assert result.returncode == 1
    error = _status(s3, bucket)["error"]
    assert error["code"] == "NAN_LOSS" and "step 3/24" in error["message"] and "bf16" in error["message"]
    assert not [k for k in _keys(s3, bucket, "train/") if k.endswith(".safetensors")]


def test_a_checkpoint_of_the_wrong_dim_is_not_published(seeded):
    s3, bucket, env, tmp = seeded
    result = _train(env, tmp, FAKE_KOHYA_DIM="16")
    assert result.returncode == 1
    error = _status(s3, bucket)["error"]
    assert error["code"] == "CHECKPOINT_INVALID" and error["input"] == "anantn-000001.safetensors"
    assert not [k for k in _keys(s3, bucket, "train/") if k.endswith(".safetensors")]


def test_an_interrupted_attempt_is_resumed_from_its_last_state(seeded):
    s3, bucket, env, tmp = seeded
    # Attempt 1: a real SIGTERM (what Batch sends on a Spot reclaim) once epoch 2's state is uploaded.
    first = subprocess.Popen([sys.executable, "-m", "trainer", "train"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**env, "AVATAR_WORK_DIR": str(tmp / "work-1"), "FAKE_KOHYA_HANG_AFTER_EPOCH": "2"})
    deadline = time.monotonic() + 60
    while "train/state/anantn-000002-state/train_state.json" not in _keys(s3, bucket, "train/state/"):
        assert time.monotonic() < deadline and first.poll() is None, first.stdout.read() if first.poll() is not None else "timeout"
        time.sleep(0.3)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) != 0
    assert _status(s3, bucket)["error"]["code"] == "INTERRUPTED"
    assert [k for k in _keys(s3, bucket, "train/") if k.endswith(".safetensors")] == [f"train/{n}" for n in NAMES[:2]]

    # Attempt 2, on a fresh machine: downloads the state and passes --resume.
    second = _train(env, tmp, attempt=2)
    assert second.returncode == 0, second.stderr[-3000:]
    calls = [json.loads(line) for line in (tmp / "kohya-args.jsonl").read_text().splitlines()]
    assert "--resume" not in calls[0]
    assert calls[1][calls[1].index("--resume") + 1] == str(tmp / "work-2/output/anantn-000002-state")
    assert sorted(k for k in _keys(s3, bucket, "train/") if k.endswith(".safetensors")) == sorted(f"train/{n}" for n in NAMES)
    diary = _json(s3, bucket, "train/diary.json")
    assert [a["resumedFrom"] for a in diary["attempts"]] == [None, "anantn-000002-state"]
    assert [c["name"] for c in diary["checkpoints"]] == NAMES
    assert sorted(diary["lossPerEpoch"]) == ["1", "2", "3", "4"]
    # The epochs before the interruption were not trained again.
    assert "epoch 1/4" not in second.stdout and "epoch 3/4" in second.stdout


def test_base_model_is_cached_and_verified(seeded, monkeypatch):
    s3, bucket, env, tmp = seeded
    monkeypatch.setenv("AVATAR_BASE_MODEL_KEY", BASE_KEY)
    job = Job.from_env()
    first, second = fetch_base_model(job), fetch_base_model(job)
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["sha256"] == second["sha256"] == sha256(first["path"])
    assert first["sha256"] == s3.head_object(Bucket=bucket, Key=BASE_KEY)["Metadata"]["sha256"]


def test_a_poisoned_cache_entry_is_caught_by_the_objects_sha256(seeded, monkeypatch):
    s3, bucket, env, tmp = seeded
    monkeypatch.setenv("AVATAR_BASE_MODEL_KEY", BASE_KEY)
    job = Job.from_env()
    good = fetch_base_model(job)
    original = good["path"].read_bytes()
    # Another job on the host rewrote the cache: same size, and a sidecar that vouches for it (what
    # the cache used to trust).
    poison = os.urandom(len(original))
    good["path"].write_bytes(poison)
    head = s3.head_object(Bucket=bucket, Key=BASE_KEY)
    good["path"].with_name(good["path"].name + ".json").write_text(
        json.dumps({"size": len(poison), "etag": head["ETag"], "sha256": hashlib.sha256(poison).hexdigest()}))
    again = fetch_base_model(job)
    assert again["cached"] is False and again["path"].read_bytes() == original and again["sha256"] == good["sha256"]


def test_a_base_model_without_sha256_metadata_is_refused(seeded, monkeypatch):
    s3, bucket, env, tmp = seeded
    monkeypatch.setenv("AVATAR_BASE_MODEL_KEY", "models/unhashed.safetensors")
    s3.put_object(Bucket=bucket, Key="models/unhashed.safetensors", Body=b"weights")
    with pytest.raises(StageError) as e:
        fetch_base_model(Job.from_env())
    assert e.value.code == "BASE_MODEL_UNVERIFIED" and e.value.input == "models/unhashed.safetensors"
    assert "--metadata sha256=" in e.value.message
    # Metadata that does not match the body: the download is refused and nothing is cached.
    s3.put_object(Bucket=bucket, Key="models/unhashed.safetensors", Body=b"weights", Metadata={"sha256": "0" * 64})
    with pytest.raises(StageError) as e:
        fetch_base_model(Job.from_env())
    assert e.value.code == "BASE_MODEL_CORRUPT"
    assert list((tmp / "cache/base-models").iterdir()) == []
