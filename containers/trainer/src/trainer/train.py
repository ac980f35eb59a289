"""The train stage: kohya train_network.py driven from plan.json, watched, verified and published.

Checkpoints and resume state are uploaded as they appear, so a Spot interruption loses at most
one epoch: a retried attempt of the same job downloads the newest state and passes --resume.
"""
from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path, PurePosixPath

from avatar_job import Job, StageError, Status, now

from . import kohya
from .progress import Event, parse_line, split_lines
from .verify import sha256, verify_checkpoint

SCAN_INTERVAL_S = 2.0
LOG_THROTTLE_S = 15.0
TERM_GRACE_S = 60.0


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
        raise StageError("BF16_UNSUPPORTED", "this GPU has no bf16 (pre-Ampere); set training.mixedPrecision to fp16", "spec.training.mixedPrecision")


def fetch_base_model(job: Job) -> dict:
    """The SD1.5 checkpoint from the artifacts bucket, cached on the host across jobs.

    The cached copy is reused only when its size and ETag match the object and its sha256 matches
    the one recorded when it was downloaded.
    """
    key = os.environ.get("AVATAR_BASE_MODEL_KEY")
    if not key:
        raise StageError("MISSING_ENV", "AVATAR_BASE_MODEL_KEY is not set; the Batch job definition must name the base model", "AVATAR_BASE_MODEL_KEY")
    try:
        head = job.s3.head_object(Bucket=job.artifacts_bucket, Key=key)
    except job.s3.exceptions.ClientError:
        raise StageError("BASE_MODEL_MISSING", f"s3://{job.artifacts_bucket}/{key} is missing; upload the SD 1.5 checkpoint there", key)
    size, etag = head["ContentLength"], head.get("ETag", "")
    local = job.cache_dir / "base-models" / PurePosixPath(key).name
    sidecar = local.with_name(local.name + ".json")
    if local.is_file() and sidecar.is_file() and local.stat().st_size == size:
        known = json.loads(sidecar.read_text())
        if known.get("etag") == etag and known.get("size") == size and sha256(local) == known.get("sha256"):
            return {"key": key, "path": local, "size": size, "sha256": known["sha256"], "cached": True}
    local.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the target and rename: another job on this host may be reading the cache.
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=local.name + ".part-")
    os.close(fd)
    job.s3.download_file(job.artifacts_bucket, key, tmp)
    digest = sha256(Path(tmp))
    expected = head.get("Metadata", {}).get("sha256")
    if expected and expected != digest:
        os.unlink(tmp)
        raise StageError("BASE_MODEL_CORRUPT", f"the downloaded base model's sha256 {digest} differs from the object's metadata {expected}; re-upload it", key)
    os.replace(tmp, local)
    sidecar.write_text(json.dumps({"size": size, "etag": etag, "sha256": digest}))
    return {"key": key, "path": local, "size": size, "sha256": digest, "cached": False}


def _state_epoch(name: str, output_name: str, epochs: int) -> int | None:
    if name == f"{output_name}-state":
        return epochs
    m = re.fullmatch(re.escape(output_name) + r"-(\d{6})-state", name)
    return int(m[1]) if m else None


class Run:
    """One attempt: launches kohya, follows its output, publishes what it writes."""

    def __init__(self, job: Job, status: Status, plan: dict, workdir: Path):
        self.job, self.status, self.plan, self.workdir = job, status, plan, workdir
        self.name = plan["outputName"]
        self.training = plan["spec"]["training"]
        self.epochs = plan["plan"]["epochs"]
        self.total = plan["plan"]["totalSteps"]
        self.output_dir = workdir / "output"
        self.dataset_dir = workdir / "dataset"
        self.epoch = 0
        self.step = 0
        self.loss: float | None = None
        self.seen: dict[Path, tuple] = {}
        self.published: set[str] = set()
        self.terminated = False
        self.tail: list[str] = []
        self.no_data_logged = False
        self.diary: dict = {}

    # ---- preparation ----
    def prepare_dataset(self) -> None:
        folder = self.plan["plan"]["folder"]
        target = self.dataset_dir / folder
        for i, image in enumerate(self.plan["images"]):
            stem = PurePosixPath(image).stem
            self.job.download(f"normalize/{folder}/{image}", target / image)
            try:
                self.job.download(f"caption/{folder}/{stem}.txt", target / f"{stem}.txt")
            except StageError as e:
                raise StageError("MISSING_INPUT", f"no caption for {image}; run the caption stage first", e.input)
            if i % 10 == 0:
                self.status.progress(0.01, f"downloading the dataset ({i + 1}/{len(self.plan['images'])})")

    def find_resume_state(self) -> Path | None:
        """Downloads the newest state a previous attempt of this job uploaded, if any."""
        states: dict[str, list[str]] = {}
        for rel in self.job.list("train/state/"):
            parts = rel.split("/")
            if len(parts) >= 4:
                states.setdefault(parts[2], []).append(rel)
        ranked = sorted((e, n) for n in states if (e := _state_epoch(n, self.name, self.epochs)) is not None)
        if not ranked:
            return None
        epoch, name = ranked[-1]
        for rel in states[name]:
            self.job.download(rel, self.output_dir / name / rel.split("/", 3)[3])
        self.published.add(f"state/{name}")
        self.epoch = epoch
        return self.output_dir / name

    # ---- publishing ----
    def _stable(self, path: Path) -> bool:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        sig = (len(files), sum(p.stat().st_size for p in files), max((p.stat().st_mtime for p in files), default=0))
        stable = self.seen.get(path) == sig
        self.seen[path] = sig
        return stable

    def publish(self, final: bool = False) -> None:
        """Uploads checkpoints and state folders that are complete (final: whatever exists now)."""
        if not self.output_dir.is_dir():
            return
        for path in sorted(self.output_dir.iterdir()):
            if path.suffix == ".safetensors" and path.name not in self.published:
                m = re.fullmatch(re.escape(self.name) + r"(?:-(\d{6}))?\.safetensors", path.name)
                if m and (final or self._stable(path)):
                    self._publish_checkpoint(path, int(m[1]) if m[1] else self.epochs)
            elif path.is_dir() and f"state/{path.name}" not in self.published:
                if _state_epoch(path.name, self.name, self.epochs) is not None and (final or ((path / "train_state.json").is_file() and self._stable(path))):
                    self._publish_state(path)

    def _publish_checkpoint(self, path: Path, epoch: int) -> None:
        summary = verify_checkpoint(path, self.training["network"], self.training["networkDim"], float(self.training["networkAlpha"]))
        digest = sha256(path)
        self.job.s3.upload_file(str(path), self.job.artifacts_bucket, self.job.key(f"train/{path.name}"),
                                ExtraArgs={"Metadata": {"sha256": digest}})
        self.published.add(path.name)
        entry = {**summary, "name": path.name, "epoch": epoch, "sha256": digest, "size": path.stat().st_size}
        self.diary["checkpoints"] = [c for c in self.diary["checkpoints"] if c["name"] != path.name] + [entry]
        self.diary["checkpoints"].sort(key=lambda c: c["epoch"])
        print(f"train: published {path.name} (epoch {epoch}, {summary['modules']} modules, sha256 {digest[:12]})", flush=True)
        self.save_diary()

    def _publish_state(self, path: Path) -> None:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            self.job.upload(f, f"train/state/{path.name}/{f.relative_to(path).as_posix()}")
        # Only the newest state is worth keeping: older ones cost storage and are never resumed from.
        for rel in self.job.list("train/state/"):
            if rel.split("/")[2] != path.name:
                self.job.s3.delete_object(Bucket=self.job.artifacts_bucket, Key=self.job.key(rel))
        self.published.add(f"state/{path.name}")
        self.diary["state"] = path.name
        print(f"train: uploaded resume state {path.name}", flush=True)
        self.save_diary()

    def save_diary(self) -> None:
        self.diary["updatedAt"] = now()
        self.job.put_json("train/diary.json", self.diary)

    # ---- progress ----
    def on_event(self, ev: Event) -> None:
        if ev.kind == "total" and ev.total:
            self.total = ev.total
        elif ev.kind == "epoch":
            self.epoch = max(self.epoch, ev.epoch)
            self.status.progress(self._fraction(), f"epoch {ev.epoch}/{ev.epochs}", force=True, **self._fields())
        elif ev.kind == "step":
            self.step, self.total, self.loss = ev.step, ev.total, ev.loss
            if not math.isfinite(ev.loss):
                raise StageError("NAN_LOSS", f"the loss became {ev.loss} at step {ev.step}/{ev.total} (epoch {self.epoch}); "
                                 "lower training.unetLr/textEncoderLr, or use mixedPrecision bf16 instead of fp16, and retry",
                                 "spec.training")
            # stdout ("epoch n/N") and stderr (tqdm) arrive unordered, so the step, not the newest
            # "epoch" line, decides which epoch a loss belongs to.
            step_epoch = math.ceil(ev.step * self.epochs / ev.total) if ev.total else self.epoch
            self.epoch = max(self.epoch, step_epoch)
            if step_epoch:
                self.diary["lossPerEpoch"][str(step_epoch)] = ev.loss
            self.status.progress(self._fraction(), f"step {ev.step}/{ev.total}", **self._fields())
        elif ev.kind == "checkpoint":
            self.status.progress(self._fraction(), f"saving {Path(ev.path).name}", force=True, **self._fields())

    def _fraction(self) -> float:
        return 0.02 + 0.96 * (self.step / self.total if self.total else 0.0)

    def _fields(self) -> dict:
        return {"epoch": self.epoch or None, "epochs": self.epochs, "step": self.step, "totalSteps": self.total, "loss": self.loss}

    # ---- the child process ----
    def launch(self, cmd: list[str], cwd: Path | None) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Own process group, so SIGTERM reaches accelerate and the training process under it.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        lines: queue.Queue = queue.Queue()

        def read(stream, name):
            buf = ""
            while chunk := os.read(stream.fileno(), 65536):
                complete, buf = split_lines(buf + chunk.decode("utf-8", errors="replace"))
                for line in complete:
                    lines.put((name, line))
            if buf.strip():
                lines.put((name, buf))
            lines.put((name, None))

        readers = [threading.Thread(target=read, args=(s, n), daemon=True) for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for r in readers:
            r.start()
        open_streams, last_scan, last_log = 2, 0.0, 0.0
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "terminated", True))
        try:
            while open_streams:
                if self.terminated:
                    self._stop(proc)
                    self.publish(final=True)
                    raise StageError("INTERRUPTED", f"the job was stopped (SIGTERM, e.g. a Spot reclaim) during epoch {self.epoch}; "
                                     "the newest state is saved, and a retry of this job resumes from it")
                try:
                    stream, line = lines.get(timeout=0.5)
                except queue.Empty:
                    stream = None
                if stream and line is None:
                    open_streams -= 1
                elif stream:
                    ev = parse_line(line)
                    if ev is None or ev.kind != "step" or time.monotonic() - last_log > LOG_THROTTLE_S:
                        print(f"kohya: {line}", file=sys.stderr if stream == "err" else sys.stdout, flush=True)
                        last_log = time.monotonic() if ev and ev.kind == "step" else last_log
                    self.tail = (self.tail + [line])[-20:]
                    self.no_data_logged |= "No data found" in line
                    if ev:
                        try:
                            self.on_event(ev)
                        except StageError:
                            self._stop(proc)
                            raise
                if time.monotonic() - last_scan > SCAN_INTERVAL_S:
                    try:
                        self.publish()
                    except StageError:
                        self._stop(proc)
                        raise
                    last_scan = time.monotonic()
            return proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if proc.poll() is None:
                self._stop(proc)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def train_stage(job: Job, status: Status) -> None:
    plan = job.load_plan()
    kohya.check_plan(plan)
    t = plan["spec"]["training"]
    check_precision(t["mixedPrecision"])
    workdir = Path(os.environ.get("AVATAR_WORK_DIR") or tempfile.mkdtemp(prefix="avatar-train-"))
    run = Run(job, status, plan, workdir)

    status.progress(0.0, "fetching the base model", force=True)
    base = fetch_base_model(job)
    run.prepare_dataset()

    dataset_cfg = kohya.dataset_config(plan, run.dataset_dir)
    (workdir / "dataset.toml").write_text(kohya.dataset_toml(dataset_cfg))
    config = kohya.training_config(
        plan, base_model=base["path"], dataset_toml_path=workdir / "dataset.toml", output_dir=run.output_dir,
        tokenizer_dir=Path(os.environ.get("AVATAR_TOKENIZER_CACHE_DIR") or "/opt/tokenizers"),
        attention=kohya.attention(), gpu_gib=_gpu_gib(),
        workers=kohya.data_loader_workers(kohya.available_cpus(), kohya.shm_bytes(), t["cacheLatents"]),
    )
    (workdir / "config.toml").write_text(kohya.toml_table(config))
    job.upload(workdir / "dataset.toml", "train/dataset.toml")
    job.upload(workdir / "config.toml", "train/config.toml")

    run.output_dir.mkdir(parents=True, exist_ok=True)
    resume = run.find_resume_state()
    try:
        previous = json.loads(job.get_bytes("train/diary.json")) if resume else {}
    except (StageError, json.JSONDecodeError):
        previous = {}
    run.diary = {
        "teamId": job.team_id, "jobId": job.job_id, "outputName": run.name,
        "startedAt": previous.get("startedAt", now()),
        "attempts": previous.get("attempts", []) + [{"startedAt": now(), "resumedFrom": resume.name if resume else None}],
        "config": config, "datasetConfig": dataset_cfg, "versions": _versions(),
        "baseModel": {k: base[k] for k in ("key", "size", "sha256")},
        "plan": plan["plan"], "training": t,
        "lossPerEpoch": previous.get("lossPerEpoch", {}), "checkpoints": previous.get("checkpoints", []),
        "state": previous.get("state"),
    }
    run.published |= {c["name"] for c in run.diary["checkpoints"]}
    run.save_diary()

    cmd, cwd = kohya.launch_command(workdir / "config.toml", resume)
    print("train: " + " ".join(cmd), flush=True)
    status.progress(0.02, f"training ({plan['plan']['arithmetic']})" + (f", resuming from {resume.name}" if resume else ""), force=True,
                    epoch=run.epoch or None, epochs=run.epochs, step=0, totalSteps=run.total)
    rc = run.launch(cmd, cwd)
    run.publish(final=True)

    if rc != 0:
        raise StageError("KOHYA_FAILED", f"train_network.py exited with {rc}: " + " | ".join(run.tail[-5:]) + "; see the job log")
    expected = [f"{run.name}-{e:06d}.safetensors" for e in range(1, run.epochs)] + [f"{run.name}.safetensors"]
    on_s3 = {PurePosixPath(k).name for k in job.list("train/") if k.count("/") == 1}
    missing = [n for n in expected if n not in on_s3]
    if missing:
        why = "kohya found no training images (check the <repeats>_<token> folder and the image files)" if run.no_data_logged \
            else "kohya exited 0 without writing them"
        raise StageError("NO_OUTPUT", f"missing checkpoints {', '.join(missing)}: {why}", missing[0])
    run.diary["finishedAt"] = now()
    run.save_diary()
    status.progress(1.0, f"trained {run.epochs} epochs; {len(expected)} checkpoints published", force=True, **run._fields())
