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

from avatar_job import Job, StageError
from conftest import REPO, status_doc
from trainer.train import fetch_base_model
from trainer.verify import sha256

HERE = Path(__file__).resolve().parent
FIXTURE = json.loads((REPO / "test/fixtures/contract/plan-recipe-25.json").read_text())
SCHEMA = json.loads((REPO / "containers/common/src/avatar_job/contract.schema.json").read_text())
PREFIX = "teams/team-a/jobs/recipe-25/"
BASE_KEY = "models/sd15-test.safetensors"
EPOCHS = 4
NAMES = [f"anantn-{e:06d}.safetensors" for e in range(1, EPOCHS)] + ["anantn.safetensors"]
# What accelerate.save_state leaves in a kohya state folder (see fake_kohya.STATE_FILES).
STATE_FILES = sorted(
    ["train_state.json", "model.safetensors", "optimizer.bin", "scheduler.bin", "sampler.bin", "sampler_1.bin", "random_states_0.pkl"]
)


def small_plan():
    """3 images x 2 repeats x 4 epochs at dim 8: the recipe fixture, shrunk."""
    plan = json.loads(json.dumps(FIXTURE))
    plan["images"] = ["anantn-01.png", "anantn-02.png", "anantn-03.png"]
    plan["userCaptions"] = []
    plan["plan"].update(
        numImages=3,
        repeats=2,
        epochs=EPOCHS,
        totalSteps=24,
        folder="2_anantn",
        arithmetic="3 images x 2 repeats x 4 epochs / batch 1 = 24 steps (target 1875)",
    )
    plan["spec"]["training"].update(networkDim=8, networkAlpha=4)
    return plan


@pytest.fixture
def seeded(job_env, tmp_path):
    s3, bucket = boto3.client("s3"), job_env["AVATAR_ARTIFACTS_BUCKET"]

    def put(key, body):
        return s3.put_object(Bucket=bucket, Key=key, Body=body)

    plan = small_plan()
    put(PREFIX + "normalize/plan.json", json.dumps(plan))
    put(
        PREFIX + "status.json",
        json.dumps(status_doc("caption")),
    )
    for i, name in enumerate(plan["images"]):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (60 * i, 90, 120)).save(buf, "PNG")
        put(PREFIX + f"normalize/2_anantn/{name}", buf.getvalue())
        put(PREFIX + f"caption/2_anantn/{name[:-4]}.txt", f"photo of anantn, a man, picture {i}\n")
    base = os.urandom(4096)
    s3.put_object(Bucket=bucket, Key=BASE_KEY, Body=base, Metadata={"sha256": hashlib.sha256(base).hexdigest()})
    env = {
        **os.environ,
        **job_env,
        "AVATAR_BASE_MODEL_KEY": BASE_KEY,
        "AVATAR_KOHYA_CMD": f"{sys.executable} {HERE / 'fake_kohya.py'}",
        "FAKE_KOHYA_ARGS_LOG": str(tmp_path / "kohya-args.jsonl"),
    }
    return s3, bucket, env, tmp_path


def _train(env, tmp_path, attempt=1, **extra):
    return subprocess.run(
        [sys.executable, "-m", "trainer", "train"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "AVATAR_WORK_DIR": str(tmp_path / f"work-{attempt}"), **extra},
    )


def _keys(s3, bucket, sub):
    return sorted(o["Key"][len(PREFIX) :] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + sub).get("Contents", []))


def _checkpoints(s3, bucket):
    """The published LoRA files (train/<name>.safetensors), not the weights inside state folders."""
    return [k for k in _keys(s3, bucket, "train/") if k.count("/") == 1 and k.endswith(".safetensors")]


def _json(s3, bucket, rel):
    return json.loads(s3.get_object(Bucket=bucket, Key=PREFIX + rel)["Body"].read())


def _status(s3, bucket):
    status = _json(s3, bucket, "status.json")
    jsonschema.validate(status, {"$ref": "#/$defs/Status", "$defs": SCHEMA["$defs"]})
    return status


def test_a_run_publishes_every_checkpoint_state_and_diary(seeded):
    s3, bucket, env, tmp = seeded
    result = _train(env, tmp, AVATAR_JOB_SECRET="job-secret-kept-from-kohya", FAKE_KOHYA_ENV_LOG=str(tmp / "kohya-env.txt"))
    assert result.returncode == 0, result.stderr[-3000:]
    # kohya sees the job's env but not the secret that mints its S3 credentials.
    kohya_env = (tmp / "kohya-env.txt").read_text().split()
    assert "AVATAR_JOB_ID" in kohya_env and "AVATAR_JOB_SECRET" not in kohya_env

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
    assert not _checkpoints(s3, bucket)


def test_a_checkpoint_of_the_wrong_dim_is_not_published(seeded):
    s3, bucket, env, tmp = seeded
    result = _train(env, tmp, FAKE_KOHYA_DIM="16")
    assert result.returncode == 1
    error = _status(s3, bucket)["error"]
    assert error["code"] == "CHECKPOINT_INVALID" and error["input"] == "anantn-000001.safetensors"
    assert not _checkpoints(s3, bucket)


def _start(env, tmp_path, attempt=1, **extra):
    """`python -m trainer train` as Batch runs it, in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", "train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "AVATAR_WORK_DIR": str(tmp_path / f"work-{attempt}"), "AWS_BATCH_JOB_ATTEMPT": str(attempt), **extra},
    )


def _wait_for(proc, condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the trainer exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _states(s3, bucket):
    """Each state folder on S3 and the files in it."""
    out: dict[str, list[str]] = {}
    for k in _keys(s3, bucket, "train/state/"):
        _, _, name, rel = k.split("/", 3)
        out.setdefault(name, []).append(rel)
    return out


def _kohya_calls(tmp):
    return [json.loads(line) for line in (tmp / "kohya-args.jsonl").read_text().splitlines()]


def test_a_kill_during_a_state_save_never_publishes_half_a_state(seeded):
    s3, bucket, env, tmp = seeded
    # kohya writes train_state.json first and the weights and optimizer after it (30 s apart here):
    # SIGTERM lands while epoch 2's state folder holds train_state.json alone.
    first = _start(env, tmp, FAKE_KOHYA_SAVE_DELAY="30", FAKE_KOHYA_SAVE_DELAY_EPOCH="2")
    half = tmp / "work-1/output/anantn-000002-state"
    _wait_for(first, lambda: (half / "train_state.json").is_file(), "kohya began saving epoch 2's state")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) != 0
    assert sorted(p.name for p in half.iterdir()) == ["train_state.json"]  # the kill did land mid-save

    # Only a complete state is on S3 (epoch 1's), and it was not deleted for the half one.
    states = _states(s3, bucket)
    assert {name: sorted(f for f in files if f != ".complete.json") for name, files in states.items()} == {
        "anantn-000001-state": STATE_FILES
    }
    manifest = _json(s3, bucket, "train/state/anantn-000001-state/.complete.json")
    assert sorted(f["path"] for f in manifest["files"]) == STATE_FILES and manifest["epoch"] == 1
    for f in manifest["files"]:
        body = s3.get_object(Bucket=bucket, Key=PREFIX + "train/state/anantn-000001-state/" + f["path"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (f["size"], f["sha256"])
    # Epoch 2's checkpoint was finished (its state folder had begun), so it is published.
    assert _checkpoints(s3, bucket) == [f"train/{n}" for n in NAMES[:2]]

    # The retry resumes from epoch 1's state: epoch 2 (cut short while saving) is trained again.
    second = _train(env, tmp, attempt=2, AWS_BATCH_JOB_ATTEMPT="2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    calls = _kohya_calls(tmp)
    assert calls[1][calls[1].index("--resume") + 1] == str(tmp / "work-2/output/anantn-000001-state")
    assert "epoch 1/4" not in second.stdout and "epoch 2/4" in second.stdout
    assert list(_states(s3, bucket)) == ["anantn-state"]
    assert _checkpoints(s3, bucket) == sorted(f"train/{n}" for n in NAMES)


def _reclaim(s3, bucket, env, tmp, attempt, epoch):
    """One attempt that Spot reclaims during epoch+1, once epoch's state is uploaded and verified:
    ECS sends the container a real SIGTERM when Batch drains the instance."""
    proc = _start(env, tmp, attempt, FAKE_KOHYA_HANG_AFTER_EPOCH=str(epoch))
    marker = f"train/state/anantn-{epoch:06d}-state/.complete.json"
    _wait_for(proc, lambda: marker in _keys(s3, bucket, "train/state/"), f"epoch {epoch}'s state was published")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    return proc.stdout.read()


def test_spot_reclaims_mid_epoch_leave_running_and_each_retry_loses_only_that_epoch(seeded):
    s3, bucket, env, tmp = seeded
    _reclaim(s3, bucket, env, tmp, attempt=1, epoch=1)
    # Batch retries a Spot reclaim, so the status is not `failed`: it says what happens next.
    status = _status(s3, bucket)
    assert (status["state"], status["stage"]) == ("running", "train") and "error" not in status and "finishedAt" not in status
    assert status["progress"]["message"] == (
        "interrupted (attempt 1 of 3); Batch retries and resumes at epoch 2 of 4 from the saved state of epoch 1"
    )
    assert (status["progress"]["epoch"], status["progress"]["step"]) == (2, 6)

    # Attempt 2 resumes and is reclaimed in its turn during epoch 3. kohya restarted its step count
    # at the resume, so the state it saved says "step 6": only --initial_epoch keeps attempt 3 right.
    out = _reclaim(s3, bucket, env, tmp, attempt=2, epoch=2)
    assert "epoch 1/4" not in out and "epoch 2/4" in out
    status = _status(s3, bucket)
    assert status["state"] == "running" and status["progress"]["message"] == (
        "interrupted (attempt 2 of 3); Batch retries and resumes at epoch 3 of 4 from the saved state of epoch 2"
    )
    assert (status["progress"]["epoch"], status["progress"]["step"]) == (3, 12)

    # Attempt 3, on a fresh machine: downloads epoch 2's state and trains epochs 3 and 4 only.
    seen = []
    third = _start(env, tmp, attempt=3)
    while third.poll() is None:
        seen.append(_status(s3, bucket)["progress"]["message"])
        time.sleep(0.2)
    out = third.stdout.read()
    assert third.returncode == 0, out[-3000:]
    assert any(m.endswith("(attempt 3 of 3)") for m in seen)
    calls = _kohya_calls(tmp)
    assert "--resume" not in calls[0]
    assert calls[1][calls[1].index("--resume") :] == ["--resume", str(tmp / "work-2/output/anantn-000001-state"), "--initial_epoch", "2"]
    assert calls[2][calls[2].index("--resume") :] == ["--resume", str(tmp / "work-3/output/anantn-000002-state"), "--initial_epoch", "3"]
    assert "epoch 2/4" not in out and "epoch 3/4" in out
    assert _checkpoints(s3, bucket) == sorted(f"train/{n}" for n in NAMES)
    diary = _json(s3, bucket, "train/diary.json")
    assert [a["resumedFrom"] for a in diary["attempts"]] == [None, "anantn-000001-state", "anantn-000002-state"]
    assert [c["name"] for c in diary["checkpoints"]] == NAMES
    # Steps are counted across the resumes: each epoch's loss is its own, falling.
    losses = [diary["lossPerEpoch"][str(e)] for e in range(1, 5)]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 4
    status = _status(s3, bucket)
    assert status["state"] == "running" and status["progress"]["fraction"] == 1.0 and status["progress"]["step"] == 24
    assert status["progress"]["message"].endswith("(attempt 3 of 3)")


def test_the_interrupted_status_has_the_newest_step_whichever_stream_was_read_first(seeded, tmp_path):
    """The order the flaky reclaim test once met under load: kohya's stdout "epoch 2/4" (a forced
    status write) handled before the stderr step lines printed ahead of it, which then fell in the
    15 s throttle. The interrupted status must still carry step 6, not the step of the last write."""
    from avatar_job import Interrupted, Status
    from trainer.progress import Event
    from trainer.publish import Publisher
    from trainer.supervise import Supervisor

    s3, bucket, _, _ = seeded
    job = Job.from_env("train")
    plan = job.load_plan()
    status = Status(job, "train", clock=lambda: 0.0, attempt=(1, 3))  # every unforced write is throttled
    publisher = Publisher(job, plan, tmp_path / "output")
    publisher.diary = {"lossPerEpoch": {}, "checkpoints": []}  # train_stage's start of the diary, in short
    sup = Supervisor(status, plan, publisher)
    sup.on_event(Event("epoch", epoch=1, epochs=EPOCHS))
    sup.on_event(Event("step", step=1, total=24, loss=0.2))
    sup.on_event(Event("epoch", epoch=2, epochs=EPOCHS))  # overtook steps 2-6 on the other stream
    assert (_status(s3, bucket)["progress"]["epoch"], _status(s3, bucket)["progress"]["step"]) == (2, 1)
    for step in range(2, 7):
        sup.on_event(Event("step", step=step, total=24, loss=0.2 / step))
    status.interrupted(Interrupted("resumes at epoch 2 of 4"))
    progress = _status(s3, bucket)["progress"]
    assert (progress["epoch"], progress["step"], progress["loss"]) == (2, 6, 0.2 / 6)
    assert progress["message"] == "interrupted (attempt 1 of 3); Batch retries and resumes at epoch 2 of 4"


def test_a_sigterm_on_the_last_attempt_fails_the_job(seeded):
    s3, bucket, env, tmp = seeded
    first = _start(env, tmp, attempt=3, FAKE_KOHYA_HANG_AFTER_EPOCH="1")
    _wait_for(
        first,
        lambda: "train/state/anantn-000001-state/.complete.json" in _keys(s3, bucket, "train/state/"),
        "epoch 1's state was published",
    )
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143
    status = _status(s3, bucket)
    assert status["state"] == "failed" and status["error"]["code"] == "INTERRUPTED"
    assert "attempt 3 of 3" in status["error"]["message"] and "no more attempts" in status["error"]["message"]


def test_the_kill_grace_stays_inside_the_container_stop_timeout(monkeypatch):
    from avatar_job import StageError
    from trainer.supervise import kill_grace_s

    for stop, grace in (("120", 30.0), ("30", 7.5), ("8", 2.0), ("600", 30.0)):
        monkeypatch.setenv("AVATAR_STOP_TIMEOUT_S", stop)
        assert kill_grace_s() == grace
    monkeypatch.delenv("AVATAR_STOP_TIMEOUT_S")
    assert kill_grace_s() == 30.0  # the default stop timeout, 120 s
    monkeypatch.setenv("AVATAR_STOP_TIMEOUT_S", "two minutes")
    with pytest.raises(StageError) as e:
        kill_grace_s()
    assert e.value.code == "INVALID_ENV" and e.value.input == "AVATAR_STOP_TIMEOUT_S"


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
        json.dumps({"size": len(poison), "etag": head["ETag"], "sha256": hashlib.sha256(poison).hexdigest()})
    )
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


def test_resume_takes_the_newest_state_whose_upload_was_finished_and_verified(seeded, capsys):
    from trainer.download import find_resume_state

    s3, bucket, env, tmp = seeded
    job = Job.from_env()

    def upload(name, files, marker=True, lie=None):
        entries = []
        for rel, body in files.items():
            s3.put_object(Bucket=bucket, Key=f"{PREFIX}train/state/{name}/{rel}", Body=body)
            entries.append({"path": rel, "size": len(body), "sha256": hashlib.sha256(lie or body).hexdigest()})
        if marker:
            s3.put_object(Bucket=bucket, Key=f"{PREFIX}train/state/{name}/.complete.json", Body=json.dumps({"files": entries}))

    def full(epoch):
        return {"train_state.json": json.dumps({"current_epoch": epoch}).encode(), "model.safetensors": os.urandom(64)}

    upload("anantn-000001-state", full(1))
    upload("anantn-000002-state", full(2), marker=False)  # the upload was cut short: no manifest
    upload("anantn-000003-state", full(3), lie=b"other")  # a file differs from its manifest

    plan = small_plan()
    found = find_resume_state(job, plan["outputName"], plan["plan"]["epochs"], tmp / "work/output")
    assert found == (tmp / "work/output/anantn-000001-state", 1)
    assert sorted(p.name for p in (tmp / "work/output").iterdir()) == ["anantn-000001-state"]
    assert sorted(p.name for p in (tmp / "work/output/anantn-000001-state").iterdir()) == ["model.safetensors", "train_state.json"]
    out = capsys.readouterr()
    assert "ignoring train/state/anantn-000002-state: it has no .complete.json" in out.out
    assert "not resuming from anantn-000003-state" in out.err
