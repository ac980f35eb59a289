"""The job's runtime contract, shared by the GPU containers: env, S3 layout, plan.json, status.json.

One package for both images: their Docker build context is containers/, and each Dockerfile copies
common/src beside its own src/. The JSON Schema beside it is generated from lambdas/shared/contract.ts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from . import layout
from .credentials import EXIT_NO_CREDENTIALS, CredentialsError, job_session

SCHEMA_PATH = Path(__file__).with_name("contract.schema.json")
STATUS_THROTTLE_S = 15.0
# A job in one of these states is over: no stage writes its status.json again.
TERMINAL_STATES = ("failed", "succeeded", "cancelled")
# The job definitions' retryAttempts (infra/constructs/gpu-batch.ts): Batch reruns a Spot-reclaimed job
# up to this many attempts in all.
DEFAULT_BATCH_ATTEMPTS = 3
# Seconds between SIGTERM and SIGKILL; the infra sets ECS_CONTAINER_STOP_TIMEOUT to the same value.
DEFAULT_STOP_TIMEOUT_S = 120.0


class StageError(Exception):
    """A failure to report in status.json: a stable code, what to do, and the offending input."""

    def __init__(self, code: str, message: str, input: str | None = None):
        super().__init__(f"{code}: {message}" + (f" ({input})" if input else ""))
        self.code, self.message, self.input = code, message, input


class Interrupted(StageError):
    """SIGTERM: Batch is stopping this attempt (a Spot reclaim, a terminated job, a timeout).

    `resume` says what a retry does ("resumes from epoch 2"); run_stage turns it into status.json.
    """

    def __init__(self, resume: str = "reruns the stage"):
        super().__init__("INTERRUPTED", f"the job was stopped (SIGTERM); a retry {resume}")
        self.resume = resume


def attempt() -> tuple[int, int]:
    """(this attempt, attempts Batch makes in all): AWS_BATCH_JOB_ATTEMPT is 1-based, unset outside Batch."""

    def number(name: str, default: int) -> int:
        raw = os.environ.get(name) or str(default)
        if not raw.isdigit() or int(raw) < 1:
            raise StageError("INVALID_ENV", f"{name} must be a whole number from 1, not {raw!r}; fix the Batch job definition", name)
        return int(raw)

    return number("AWS_BATCH_JOB_ATTEMPT", 1), number("AVATAR_BATCH_ATTEMPTS", DEFAULT_BATCH_ATTEMPTS)


def stop_timeout_s() -> float:
    """AVATAR_STOP_TIMEOUT_S: how long the container has between SIGTERM and SIGKILL."""
    raw = os.environ.get("AVATAR_STOP_TIMEOUT_S") or str(DEFAULT_STOP_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise StageError(
            "INVALID_ENV",
            f"AVATAR_STOP_TIMEOUT_S must be a positive number of seconds, not {raw!r}; set it to the container stop timeout",
            "AVATAR_STOP_TIMEOUT_S",
        )
    return value


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]})


def validate(name: str, doc: Any, source: str) -> None:
    """Raises StageError naming every offending field of `doc` against the contract's $defs/<name>."""
    errors = sorted(_validator(name).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        parts = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:10]]
        raise StageError("INVALID_" + name.upper(), f"{source} is invalid: {'; '.join(parts)}", source)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise StageError("MISSING_ENV", f"environment variable {name} is not set; the Batch job definition must set it", name)
    return value


@dataclass
class Job:
    team_id: str
    job_id: str
    inbox_bucket: str
    artifacts_bucket: str
    cache_dir: Path
    s3: Any = field(repr=False, default=None)

    @classmethod
    def from_env(cls, stage: str | None = None) -> Job:
        """The job of this process; `stage` names the credentials to mint when AVATAR_MINT_FUNCTION is set
        (credentials.job_session: raises CredentialsError when refused)."""
        job = cls(
            team_id=_env("AVATAR_TEAM_ID"),
            job_id=_env("AVATAR_JOB_ID"),
            inbox_bucket=_env("AVATAR_INBOX_BUCKET"),
            artifacts_bucket=_env("AVATAR_ARTIFACTS_BUCKET"),
            cache_dir=Path(os.environ.get("AVATAR_CACHE_DIR") or "/cache"),
        )
        # Every S3 call of the stage goes through this client, so through the job-scoped credentials.
        # boto3 honours AWS_ENDPOINT_URL_S3, which points tests at the local endpoint.
        job.s3 = job_session(stage).client("s3")
        return job

    @property
    def prefix(self) -> str:
        return layout.job_prefix(self.team_id, self.job_id)

    def key(self, rel: str) -> str:
        return self.prefix + rel

    # --- artifacts bucket I/O, paths relative to the job prefix ---
    def get_bytes(self, rel: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.artifacts_bucket, Key=self.key(rel))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise StageError(
                "MISSING_INPUT", f"s3://{self.artifacts_bucket}/{self.key(rel)} does not exist; run the earlier stages first", rel
            ) from None

    def put_bytes(self, rel: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.s3.put_object(Bucket=self.artifacts_bucket, Key=self.key(rel), Body=body, ContentType=content_type)

    def put_json(self, rel: str, doc: Any) -> None:
        self.put_bytes(rel, (json.dumps(doc, indent=2) + "\n").encode(), "application/json")

    def download(self, rel: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.get_bytes(rel))

    def upload(self, src: Path, rel: str) -> None:
        self.s3.upload_file(str(src), self.artifacts_bucket, self.key(rel))

    def list(self, rel_prefix: str) -> list[str]:
        """Keys under a sub-prefix, relative to the job prefix."""
        return list(self.sizes(rel_prefix))

    def sizes(self, rel_prefix: str) -> dict[str, int]:
        """Sizes of the objects under a sub-prefix, by key relative to the job prefix."""
        out: dict[str, int] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.artifacts_bucket, Prefix=self.key(rel_prefix))
        for page in pages:
            out.update({o["Key"][len(self.prefix) :]: o["Size"] for o in page.get("Contents", [])})
        return out

    def load_plan(self) -> dict:
        raw = self.get_bytes(layout.PLAN)
        try:
            plan = json.loads(raw)
        except json.JSONDecodeError as e:
            raise StageError("INVALID_DATASETPLAN", f"{layout.PLAN} is not JSON ({e}); rerun the normalize stage", layout.PLAN) from e
        validate("DatasetPlan", plan, layout.PLAN)
        if (plan["teamId"], plan["jobId"]) != (self.team_id, self.job_id):
            raise StageError("INVALID_DATASETPLAN", f"plan.json belongs to {plan['teamId']}/{plan['jobId']}, not this job", layout.PLAN)
        plan.setdefault("userCaptions", [])
        return plan


class Status:
    """Writes status.json for one stage: `running` with throttled progress, or `failed` with an error.

    Never writes `succeeded`: only the final Lambda does.
    """

    def __init__(self, job: Job, stage: str, clock: Callable[[], float] = time.monotonic, attempt: tuple[int, int] = (1, 1)):
        self.job, self.stage, self.clock = job, stage, clock
        self.attempt, self.attempts = attempt
        self.last_write = -math.inf
        self.last_progress: dict = {"fraction": 0.0, "message": ""}  # the newest reported, written or not
        self.created_at = now()
        try:
            existing = json.loads(job.get_bytes(layout.STATUS))
            self.created_at = existing.get("createdAt") or self.created_at
        except (StageError, json.JSONDecodeError):
            pass

    def _write(self, doc: dict) -> bool:
        """Writes status.json unless it is already terminal; False when it was left alone.

        Conditional on the ETag just read: the workflow (reconcile, mark-failed) may write a terminal
        status at any moment, e.g. `cancelled` while TerminateJob's SIGTERM is on its way here, and a
        progress write racing it must lose rather than bring a stopped job back to `running`.
        """
        validate("Status", doc, layout.STATUS)
        body = (json.dumps(doc, indent=2) + "\n").encode()
        key = self.job.key(layout.STATUS)
        for _ in range(5):
            try:
                current = self.job.s3.get_object(Bucket=self.job.artifacts_bucket, Key=key)
                state = json.loads(current["Body"].read()).get("state")
                condition = {"IfMatch": current["ETag"]}
            except self.job.s3.exceptions.NoSuchKey:
                state, condition = None, {"IfNoneMatch": "*"}
            except json.JSONDecodeError:
                state, condition = None, {}
            if state in TERMINAL_STATES:
                print(f"{self.stage}: status.json is already {state}; leaving it", file=sys.stderr)
                return False
            try:
                self.job.s3.put_object(Bucket=self.job.artifacts_bucket, Key=key, Body=body, ContentType="application/json", **condition)
            except self.job.s3.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
                continue  # someone wrote in between: read again
            self.last_write = self.clock()
            return True
        raise StageError("STATUS_CONFLICT", "status.json kept changing under this stage's writes; see the job log")

    def _base(self, state: str) -> dict:
        return {
            "teamId": self.job.team_id,
            "jobId": self.job.job_id,
            "state": state,
            "stage": self.stage,
            "createdAt": self.created_at,
            "updatedAt": now(),
        }

    def progress(self, fraction: float, message: str, force: bool = False, **fields: Any) -> bool:
        """Writes progress unless one was written under STATUS_THROTTLE_S ago (force: write anyway).

        A throttled one is still remembered: an interruption reports the newest progress, not the last
        one written (which may be 15 s older, or older still when a forced write of a line on one
        stream came just before the other stream's newer step).
        """
        # A retried attempt says so in every message too, for people reading the status.
        suffix = f" (attempt {self.attempt} of {self.attempts})" if self.attempt > 1 else ""
        progress = {
            "fraction": min(1.0, max(0.0, fraction)),
            "message": message + suffix,
            "attempt": self.attempt,
            "attempts": self.attempts,
        }
        for k, v in fields.items():
            # JSON has no NaN; a non-finite loss is reported through the error instead.
            if v is not None and not (isinstance(v, float) and not math.isfinite(v)):
                progress[k] = v
        self.last_progress = progress
        if not force and self.clock() - self.last_write < STATUS_THROTTLE_S:
            return False
        return self._write({**self._base("running"), "progress": progress})

    def interrupted(self, error: Interrupted) -> None:
        """`running` while Batch still has an attempt left (it retries a Spot reclaim), else `failed`.

        A terminal status someone else already wrote (the workflow after a stopped execution) stays (_write).
        """
        attempt, attempts = self.attempt, self.attempts
        if attempt >= attempts:
            self.fail(
                StageError(
                    "INTERRUPTED",
                    f"interrupted (attempt {attempt} of {attempts}) and Batch makes no more attempts; "
                    "retry the job (a Spot reclaim each time: consider spot=false)",
                )
            )
            return
        message = f"interrupted (attempt {attempt} of {attempts}); Batch retries and {error.resume}"
        progress = {**self.last_progress, "message": message, "attempt": attempt, "attempts": attempts}
        self._write({**self._base("running"), "progress": progress})

    def fail(self, error: StageError) -> None:
        err = {"code": error.code, "message": error.message}
        if error.input:
            err["input"] = error.input
        self._write({**self._base("failed"), "finishedAt": now(), "error": err})


def run_stage(stage: str, body: Callable[[Job, Status], None]) -> int:
    """Runs a stage body and turns its outcome into status.json plus an exit code."""
    try:
        job = Job.from_env(stage)
        status = Status(job, stage, attempt=attempt())
    except StageError as e:
        print(f"{stage}: {e}", file=sys.stderr)
        return 2
    except CredentialsError as e:
        # Without credentials there is no status.json to write: the log and the exit code say it.
        print(f"{stage} failed: {e}", file=sys.stderr)
        return EXIT_NO_CREDENTIALS

    def on_sigterm(*_):
        raise Interrupted()

    # A stage that must clean up first (the trainer stopping kohya) installs its own handler meanwhile.
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        status.progress(0.0, f"{stage} starting", force=True)
        body(job, status)
        return 0
    except Interrupted as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough: finish writing the status
        print(f"{stage}: {e}", file=sys.stderr)
        return _report(stage, status.interrupted, e, 128 + signal.SIGTERM)
    except StageError as e:
        print(f"{stage} failed: {e}", file=sys.stderr)
        return _report(stage, status.fail, e, 1)
    except CredentialsError as e:  # a refresh refused mid-stage (the job was cancelled): S3 is closed now
        print(f"{stage} failed: {e}", file=sys.stderr)
        return EXIT_NO_CREDENTIALS
    except Exception as e:  # an unexpected crash still has to reach status.json
        import traceback

        traceback.print_exc()
        error = StageError("INTERNAL_ERROR", f"{type(e).__name__}: {e}; retry the job, and report it if it persists")
        return _report(stage, status.fail, error, 1)


def _report(stage: str, write: Callable[[Any], None], error: StageError, rc: int) -> int:
    """Writes the closing status; when the credentials for it are gone, the log has to do."""
    try:
        write(error)
    except CredentialsError as e:
        print(f"{stage}: could not write status.json: {e}", file=sys.stderr)
        return EXIT_NO_CREDENTIALS
    return rc
