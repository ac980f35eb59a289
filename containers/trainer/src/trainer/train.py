"""The train stage: kohya train_network.py driven from plan.json, watched, verified and published.

Checkpoints and resume state are uploaded once kohya has finished writing them (publish.py), so a
Spot interruption loses at most one epoch: a retried attempt of the same job downloads the newest
complete state (download.py) and passes --resume; supervise.py runs and follows kohya.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path, PurePosixPath

from avatar_job import Job, StageError, Status, layout, now

from . import kohya
from .download import download_dataset, find_resume_state
from .publish import Publisher
from .supervise import Supervisor
from .verify import sha256


def _versions() -> dict:
    out = {"sdScriptsCommit": os.environ.get("AVATAR_SD_SCRIPTS_COMMIT", "unknown"), "python": sys.version.split()[0]}
    for dist in ("torch", "diffusers", "transformers", "accelerate", "safetensors", "bitsandbytes", "xformers", "lycoris-lora"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _gpu_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def check_precision(mixed_precision: str) -> None:
    import torch

    if mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise StageError(
            "BF16_UNSUPPORTED", "this GPU has no bf16 (pre-Ampere); set training.mixedPrecision to fp16", "spec.training.mixedPrecision"
        )


def fetch_base_model(job: Job) -> dict:
    """The SD1.5 checkpoint from the artifacts bucket, cached on the host across jobs.

    The host cache is shared by every team's jobs on the instance, so nothing a previous job left
    there is trusted: every use, cached or not, is checked against the sha256 the operator put in the
    object's metadata (`x-amz-meta-sha256`). Hashing 4 GB takes seconds; downloading it, minutes.
    """
    key = os.environ.get("AVATAR_BASE_MODEL_KEY")
    if not key:
        raise StageError(
            "MISSING_ENV", "AVATAR_BASE_MODEL_KEY is not set; the Batch job definition must name the base model", "AVATAR_BASE_MODEL_KEY"
        )
    try:
        head = job.s3.head_object(Bucket=job.artifacts_bucket, Key=key)
    except job.s3.exceptions.ClientError:
        raise StageError(
            "BASE_MODEL_MISSING", f"s3://{job.artifacts_bucket}/{key} is missing; upload the SD 1.5 checkpoint there", key
        ) from None
    size = head["ContentLength"]
    expected = head.get("Metadata", {}).get("sha256", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        # The job role may not write under models/, so the operator records the hash once, at upload.
        raise StageError(
            "BASE_MODEL_UNVERIFIED",
            f"s3://{job.artifacts_bucket}/{key} has no sha256 in its metadata, so its cached copies cannot be checked; "
            f"upload it again with --metadata sha256=<hex> (aws s3 cp FILE s3://{job.artifacts_bucket}/{key} "
            "--metadata sha256=$(sha256sum FILE | cut -d' ' -f1))",
            key,
        )
    local = job.cache_dir / "base-models" / PurePosixPath(key).name
    if local.is_file() and local.stat().st_size == size:
        if sha256(local) == expected:
            return {"key": key, "path": local, "size": size, "sha256": expected, "cached": True}
        print(f"train: the cached {local.name} does not match the object's sha256; downloading it again", file=sys.stderr, flush=True)
    local.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the target and rename: another job on this host may be reading the cache.
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=local.name + ".part-")
    os.close(fd)
    try:
        job.s3.download_file(job.artifacts_bucket, key, tmp)
        digest = sha256(Path(tmp))
        if digest != expected:
            raise StageError(
                "BASE_MODEL_CORRUPT",
                f"the downloaded base model's sha256 {digest} differs from the object's metadata {expected}; re-upload it",
                key,
            )
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"key": key, "path": local, "size": size, "sha256": digest, "cached": False}


def train_stage(job: Job, status: Status) -> None:
    plan = job.load_plan()
    kohya.check_plan(plan)
    t = plan["spec"]["training"]
    check_precision(t["mixedPrecision"])
    workdir = Path(os.environ.get("AVATAR_WORK_DIR") or tempfile.mkdtemp(prefix="avatar-train-"))
    dataset_dir, output_dir = workdir / "dataset", workdir / "output"
    name, epochs = plan["outputName"], plan["plan"]["epochs"]

    status.progress(0.0, "fetching the base model", force=True)
    base = fetch_base_model(job)
    download_dataset(job, status, plan, dataset_dir)

    dataset_toml, config_toml = workdir / layout.file_name(layout.DATASET_TOML), workdir / layout.file_name(layout.CONFIG_TOML)
    dataset_cfg = kohya.dataset_config(plan, dataset_dir)
    dataset_toml.write_text(kohya.to_toml(dataset_cfg))
    config = kohya.training_config(
        plan,
        base_model=base["path"],
        dataset_toml_path=dataset_toml,
        output_dir=output_dir,
        tokenizer_dir=Path(os.environ.get("AVATAR_TOKENIZER_CACHE_DIR") or "/opt/tokenizers"),
        attention=kohya.attention(),
        gpu_gib=_gpu_gib(),
        workers=kohya.data_loader_workers(kohya.available_cpus(), kohya.shm_bytes(), t["cacheLatents"]),
    )
    config_toml.write_text(kohya.to_toml(config))
    job.upload(dataset_toml, layout.DATASET_TOML)
    job.upload(config_toml, layout.CONFIG_TOML)

    output_dir.mkdir(parents=True, exist_ok=True)
    publisher = Publisher(job, plan, output_dir)
    found = find_resume_state(job, name, epochs, output_dir)
    resume, resumed_epoch = found if found else (None, 0)
    if resume:
        publisher.resumed_from(resume, resumed_epoch)
    try:
        previous = json.loads(job.get_bytes(layout.DIARY)) if resume else {}
    except (StageError, json.JSONDecodeError):
        previous = {}
    publisher.diary = {
        "teamId": job.team_id,
        "jobId": job.job_id,
        "outputName": name,
        "startedAt": previous.get("startedAt", now()),
        "attempts": previous.get("attempts", []) + [{"startedAt": now(), "resumedFrom": resume.name if resume else None}],
        "config": config,
        "datasetConfig": dataset_cfg,
        "versions": _versions(),
        "baseModel": {k: base[k] for k in ("key", "size", "sha256")},
        "plan": plan["plan"],
        "training": t,
        "lossPerEpoch": previous.get("lossPerEpoch", {}),
        "checkpoints": previous.get("checkpoints", []),
        "state": previous.get("state"),
    }
    publisher.published |= {c["name"] for c in publisher.diary["checkpoints"]}
    publisher.save_diary()

    supervisor = Supervisor(status, plan, publisher, resumed_epoch)
    cmd, cwd = kohya.launch_command(config_toml, resume, resumed_epoch)
    print("train: " + " ".join(cmd), flush=True)
    status.progress(
        0.02,
        f"training ({plan['plan']['arithmetic']})" + (f", resuming from {resume.name}" if resume else ""),
        force=True,
        epoch=resumed_epoch or None,
        epochs=epochs,
        step=0,
        totalSteps=supervisor.total,
    )
    rc = supervisor.launch(cmd, cwd)
    if rc == 0:
        publisher.proven = math.inf  # a clean exit: everything kohya wrote is finished
    publisher.publish()

    if rc != 0:
        raise StageError("KOHYA_FAILED", f"train_network.py exited with {rc}: " + " | ".join(supervisor.tail[-5:]) + "; see the job log")
    expected = layout.checkpoints(name, epochs)
    on_s3 = set(job.list(layout.TRAIN))
    missing = [layout.file_name(k) for k in expected if k not in on_s3]
    if missing:
        why = (
            "kohya found no training images (check the <repeats>_<token> folder and the image files)"
            if supervisor.no_data_logged
            else "kohya exited 0 without writing them"
        )
        raise StageError("NO_OUTPUT", f"missing checkpoints {', '.join(missing)}: {why}", missing[0])
    publisher.diary["finishedAt"] = now()
    publisher.save_diary()
    status.progress(1.0, f"trained {epochs} epochs; {len(expected)} checkpoints published", force=True, **supervisor.fields())
