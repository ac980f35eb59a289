"""The train stage: kohya train_network.py driven from plan.json, watched, verified and published.

Checkpoints and resume state are uploaded once kohya has finished writing them, so a Spot
interruption loses at most one epoch: a retried attempt of the same job downloads the newest
complete state and passes --resume.

kohya writes a state folder's train_state.json FIRST (accelerate's save pre-hook, `save_model_hook`
in train_network.py), then the weights, optimizer and RNG files; nothing in the folder says it is
finished. So a file or folder counts as finished only once kohya has moved past it: a later
`epoch n/N` line, a later checkpoint or state in the output folder, or a clean exit. A published
state gets a `.complete.json` manifest (file sizes and sha256) written LAST, after the upload is
verified; only then are older states deleted, and resume only considers states with a manifest.
"""
from __future__ import annotations

import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path, PurePosixPath

from avatar_job import Interrupted, Job, StageError, Status, now, stop_timeout_s

from . import kohya
from .progress import Event, parse_line, split_lines
from .verify import sha256, verify_checkpoint

SCAN_INTERVAL_S = 2.0
LOG_THROTTLE_S = 15.0
STATE_MARKER = ".complete.json"


def kill_grace_s() -> float:
    """How long kohya gets to exit after SIGTERM before SIGKILL.

    A quarter of the container's own stop timeout (at most 30 s), so after a Spot reclaim's SIGTERM
    the rest is left to upload the finished checkpoints and state and to write status.json. kohya
    has no SIGTERM handler: a half-written state is never used, so nothing is lost by not waiting.
    """
    return min(30.0, stop_timeout_s() / 4)


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

    The host cache is shared by every team's jobs on the instance, so nothing a previous job left
    there is trusted: every use, cached or not, is checked against the sha256 the operator put in the
    object's metadata (`x-amz-meta-sha256`). Hashing 4 GB takes seconds; downloading it, minutes.
    """
    key = os.environ.get("AVATAR_BASE_MODEL_KEY")
    if not key:
        raise StageError("MISSING_ENV", "AVATAR_BASE_MODEL_KEY is not set; the Batch job definition must name the base model", "AVATAR_BASE_MODEL_KEY")
    try:
        head = job.s3.head_object(Bucket=job.artifacts_bucket, Key=key)
    except job.s3.exceptions.ClientError:
        raise StageError("BASE_MODEL_MISSING", f"s3://{job.artifacts_bucket}/{key} is missing; upload the SD 1.5 checkpoint there", key)
    size = head["ContentLength"]
    expected = head.get("Metadata", {}).get("sha256", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        # The job role may not write under models/, so the operator records the hash once, at upload.
        raise StageError("BASE_MODEL_UNVERIFIED",
                         f"s3://{job.artifacts_bucket}/{key} has no sha256 in its metadata, so its cached copies cannot be checked; "
                         f"upload it again with --metadata sha256=<hex> (aws s3 cp FILE s3://{job.artifacts_bucket}/{key} "
                         "--metadata sha256=$(sha256sum FILE | cut -d' ' -f1))", key)
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
            raise StageError("BASE_MODEL_CORRUPT", f"the downloaded base model's sha256 {digest} differs from the object's metadata {expected}; re-upload it", key)
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"key": key, "path": local, "size": size, "sha256": digest, "cached": False}


def _state_epoch(name: str, output_name: str, epochs: int) -> int | None:
    if name == f"{output_name}-state":
        return epochs
    m = re.fullmatch(re.escape(output_name) + r"-(\d{6})-state", name)
    return int(m[1]) if m else None


def _checkpoint_epoch(name: str, output_name: str, epochs: int) -> int | None:
    m = re.fullmatch(re.escape(output_name) + r"(?:-(\d{6}))?\.safetensors", name)
    return (int(m[1]) if m[1] else epochs) if m else None


def write_rank(path: Path, output_name: str, epochs: int) -> tuple[int, int] | None:
    """(position in kohya's write order, epoch) of a checkpoint file or state folder, else None.

    Epoch k < N: checkpoint (2k-1), state folder (2k), then the "epoch k+1/N" line. After the last
    epoch N: the `-state` folder (2N-1), then the final checkpoint (2N). (train_network.py:
    save_model, then save_and_remove_state_on_epoch_end; at the end save_state_on_train_end, then
    save_model of the last checkpoint.)
    """
    if path.is_dir() and (e := _state_epoch(path.name, output_name, epochs)) is not None:
        return (2 * epochs - 1 if e == epochs else 2 * e), e
    if path.is_file() and (e := _checkpoint_epoch(path.name, output_name, epochs)) is not None:
        return 2 * e if e == epochs else 2 * e - 1, e
    return None


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
        # kohya counts steps from 0 again after --resume (see kohya.launch_command): its tqdm shows
        # 1/T for the first step after the resumed epochs.
        self.resumed_epoch = 0
        self.step = 0
        self.loss: float | None = None
        # Everything at or below this position in kohya's write order is finished (see write_rank).
        self.proven: float = 0
        self.published: set[str] = set()
        self.state_epoch = 0  # of the newest complete state on S3
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
        """Downloads the newest complete state a previous attempt of this job uploaded, if any."""
        keys = self.job.list("train/state/")
        complete = {k.split("/")[2] for k in keys if k.count("/") == 3 and k.endswith("/" + STATE_MARKER)}
        for name in sorted({k.split("/")[2] for k in keys if k.count("/") >= 3} - complete):
            print(f"train: ignoring train/state/{name}: it has no {STATE_MARKER}, so its upload never finished", flush=True)
        ranked = sorted((e, n) for n in complete if (e := _state_epoch(n, self.name, self.epochs)) is not None)
        for epoch, name in reversed(ranked):
            try:
                self._download_state(name)
            except StageError as e:
                print(f"train: not resuming from {name}: {e}", file=sys.stderr, flush=True)
                # Left in the output folder, it would pass for a state kohya had written.
                shutil.rmtree(self.output_dir / name, ignore_errors=True)
                continue
            self.published.add(f"state/{name}")
            self.epoch = self.resumed_epoch = self.state_epoch = epoch
            self.proven = write_rank(self.output_dir / name, self.name, self.epochs)[0]
            return self.output_dir / name
        return None

    def _download_state(self, name: str) -> None:
        marker = f"train/state/{name}/{STATE_MARKER}"
        try:
            files = json.loads(self.job.get_bytes(marker))["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StageError("STATE_INVALID", f"{marker} is not a state manifest ({e})", marker)
        target = self.output_dir / name
        for entry in files:
            rel = PurePosixPath(entry["path"])
            if rel.is_absolute() or ".." in rel.parts or rel.name == STATE_MARKER:
                raise StageError("STATE_INVALID", f"{marker} lists the path {rel}", marker)
            dest = target / rel
            self.job.download(f"train/state/{name}/{rel}", dest)
            if dest.stat().st_size != entry["size"] or sha256(dest) != entry["sha256"]:
                raise StageError("STATE_INVALID", f"train/state/{name}/{rel} differs from its size or sha256 in {STATE_MARKER}", str(rel))

    # ---- publishing ----
    def publish(self) -> None:
        """Uploads the checkpoints and the newest state folder that kohya has finished writing."""
        if not self.output_dir.is_dir():
            return
        found = sorted((r, path) for path in self.output_dir.iterdir() if (r := write_rank(path, self.name, self.epochs)))
        # What exists proves that everything kohya writes before it is finished.
        self.proven = max([self.proven, *(rank - 1 for (rank, _), _ in found)])
        done = [(epoch, path) for (rank, epoch), path in found if rank <= self.proven]
        for epoch, path in done:
            if path.is_file() and path.name not in self.published:
                self._publish_checkpoint(path, epoch)
        states = [(epoch, path) for epoch, path in done if path.is_dir()]
        # Only the newest finished state is worth uploading: resume never uses an older one.
        if states and f"state/{states[-1][1].name}" not in self.published:
            self._publish_state(states[-1][1], states[-1][0])

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

    def _publish_state(self, path: Path, epoch: int) -> None:
        prefix = f"train/state/{path.name}/"
        files = []
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path).as_posix()
            self.job.upload(f, prefix + rel)
            files.append({"path": rel, "size": f.stat().st_size, "sha256": sha256(f)})
        # Verified before anything older goes: every file is in the bucket at its size.
        landed = self.job.sizes(prefix)
        wrong = [f["path"] for f in files if landed.get(prefix + f["path"]) != f["size"]]
        if wrong:
            raise StageError("STATE_UPLOAD_FAILED", f"{prefix}{wrong[0]} is missing or of the wrong size after its upload; retry the job", prefix + wrong[0])
        self.job.put_json(prefix + STATE_MARKER, {"state": path.name, "epoch": epoch, "files": files, "uploadedAt": now()})
        # Now the older states (and any whose upload a kill cut short) are superseded.
        for rel in self.job.list("train/state/"):
            if not rel.startswith(prefix):
                self.job.s3.delete_object(Bucket=self.job.artifacts_bucket, Key=self.job.key(rel))
        self.published.add(f"state/{path.name}")
        self.state_epoch = epoch
        self.diary["state"] = path.name
        print(f"train: uploaded resume state {path.name} ({len(files)} files, verified)", flush=True)
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
            # kohya prints "epoch n/N" after finishing everything it saves for epoch n-1.
            self.proven = max(self.proven, 2 * (ev.epoch - 1))
            self.status.progress(self._fraction(), f"epoch {ev.epoch}/{ev.epochs}", force=True, **self._fields())
        elif ev.kind == "step":
            step = min(ev.total, ev.step + self.resumed_epoch * ev.total // self.epochs)
            self.step, self.total, self.loss = step, ev.total, ev.loss
            if not math.isfinite(ev.loss):
                raise StageError("NAN_LOSS", f"the loss became {ev.loss} at step {step}/{ev.total} (epoch {self.epoch}); "
                                 "lower training.unetLr/textEncoderLr, or use mixedPrecision bf16 instead of fp16, and retry",
                                 "spec.training")
            # stdout ("epoch n/N") and stderr (tqdm) arrive unordered, so the step, not the newest
            # "epoch" line, decides which epoch a loss belongs to.
            step_epoch = math.ceil(step * self.epochs / ev.total) if ev.total else self.epoch
            self.epoch = max(self.epoch, step_epoch)
            if step_epoch:
                self.diary["lossPerEpoch"][str(step_epoch)] = ev.loss
            self.status.progress(self._fraction(), f"step {step}/{ev.total}", **self._fields())
        elif ev.kind == "checkpoint":
            self.status.progress(self._fraction(), f"saving {Path(ev.path).name}", force=True, **self._fields())
        elif ev.kind == "state":
            # Logged once the epoch's checkpoint is written, before its state folder (the last
            # state: once every epoch before the last is saved).
            self.proven = max(self.proven, 2 * ev.epoch - 1 if ev.epoch else 2 * (self.epochs - 1))
            self.status.progress(self._fraction(), f"saving the resume state of epoch {ev.epoch or self.epochs}", **self._fields())

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
                    # Batch stops the job (a Spot reclaim): save what kohya finished, never what it was writing.
                    self._stop(proc)
                    self.publish()
                    raise Interrupted(self.resume_note())
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

    def resume_note(self) -> str:
        if not self.state_epoch:
            return "trains again from epoch 1 (no state was finished yet)"
        return f"resumes at epoch {self.state_epoch + 1} of {self.epochs} from the saved state of epoch {self.state_epoch}"

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=kill_grace_s())
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
        attention=os.environ.get("AVATAR_ATTENTION", "sdpa"), gpu_gib=_gpu_gib(),
        workers=min(2, os.cpu_count() or 1),
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

    cmd, cwd = kohya.launch_command(workdir / "config.toml", resume, run.resumed_epoch)
    print("train: " + " ".join(cmd), flush=True)
    status.progress(0.02, f"training ({plan['plan']['arithmetic']})" + (f", resuming from {resume.name}" if resume else ""), force=True,
                    epoch=run.epoch or None, epochs=run.epochs, step=0, totalSteps=run.total)
    rc = run.launch(cmd, cwd)
    if rc == 0:
        run.proven = math.inf  # a clean exit: everything kohya wrote is finished
    run.publish()

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
