"""Job-scoped S3 credentials: the GPU job's own role may only invoke the mint function.

With AVATAR_MINT_FUNCTION set (the Batch job definitions), the S3 session's credentials come from that
function: STS credentials whose session policy reaches this one job's keys. They last an hour and jobs
run for many, so they are botocore RefreshableCredentials that call the mint again ahead of expiry
(botocore's advisory window, 15 min before; every S3 call blocks on a refresh in the last 10 min).
The Lambda client itself uses the ambient (task role) credentials. Unset, the session is a plain
boto3 one: local runs and tests use whatever credentials the environment has, as before.

The one-time job secret (AVATAR_JOB_SECRET) goes only into the mint's payload; no message, log line
or exception here contains it or the credentials.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, DeferredRefreshableCredentials

MINT_FUNCTION_ENV = "AVATAR_MINT_FUNCTION"
SECRET_ENV = "AVATAR_JOB_SECRET"
# The Batch job a stage runs in decides what the mint is asked for: the train job runs caption first
# (`python -m avatar_job caption train`), and its session policy covers both.
MINT_STAGE = {"caption": "train", "train": "train", "evaluate": "evaluate"}
# Invocations per refresh when the mint fails transiently (a function error other than a refusal, or
# throttling past the client's own retries), with exponential backoff between them.
MINT_ATTEMPTS = 4
BACKOFF_S = 1.0
# The exit code of a stage whose credentials were refused or could not be had: it cannot write
# status.json (no S3 access without them), so the workflow's mark-failed sees only this and the log.
EXIT_NO_CREDENTIALS = 3


class CredentialsError(Exception):
    """No job credentials: `code` is CREDENTIALS_REFUSED (the mint said no: final) or
    CREDENTIALS_UNAVAILABLE (the mint kept failing). Deliberately not a StageError: stage code that
    tolerates a StageError (a missing optional object) must not swallow this one."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _mint_payload(stage: str) -> bytes:
    secret = os.environ.get(SECRET_ENV)
    missing = [n for n in (SECRET_ENV, "AVATAR_TEAM_ID", "AVATAR_JOB_ID") if not os.environ.get(n)]
    if missing:
        raise CredentialsError(
            "CREDENTIALS_UNAVAILABLE",
            f"{MINT_FUNCTION_ENV} is set but {', '.join(missing)} is not; the workflow must pass it to the Batch job",
        )
    doc = {"stage": stage, "teamId": os.environ["AVATAR_TEAM_ID"], "jobId": os.environ["AVATAR_JOB_ID"], "secret": secret}
    return json.dumps(doc).encode()


class MintCredentials:
    """Calls the mint function for `stage` and returns botocore's credential metadata."""

    def __init__(self, function: str, stage: str | None, client: Any = None, sleep: Callable[[float], None] = time.sleep):
        if stage not in MINT_STAGE:
            raise ValueError(f"no mint stage for {stage!r}")
        self.function, self.stage = function, MINT_STAGE[stage]
        # Ambient credentials (the task role); the client retries throttling and 5xx itself.
        self.client = client or boto3.Session().client(
            "lambda", config=Config(retries={"mode": "standard", "total_max_attempts": 5}, read_timeout=30, connect_timeout=10)
        )
        self.sleep = sleep
        self.refused: CredentialsError | None = None

    def __call__(self) -> dict:
        # A refusal is final (the job ended, its secret is spent): asking again would only repeat it,
        # once per S3 call during botocore's advisory refresh window.
        if self.refused:
            raise self.refused
        payload = _mint_payload(self.stage)
        problem = "no answer"
        for attempt in range(MINT_ATTEMPTS):
            if attempt:
                self.sleep(BACKOFF_S * 2 ** (attempt - 1) * (1 + random.random() / 2))
            try:
                response = self.client.invoke(FunctionName=self.function, Payload=payload)
            except Exception as e:  # the client's own retries are spent (throttled, unreachable)
                problem = f"{type(e).__name__}: {e}"
                continue
            body = response["Payload"].read()
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if response.get("FunctionError"):
                error_type = doc.get("errorType") if isinstance(doc, dict) else None
                if error_type == "MintRefused":
                    self.refused = CredentialsError(
                        "CREDENTIALS_REFUSED",
                        f"the mint function {self.function} refused credentials for the {self.stage} stage "
                        f"({str(doc.get('errorMessage') or 'no reason given')[:300]}); the job was cancelled or finished, "
                        "or it was started outside the workflow: submit the job again",
                    )
                    raise self.refused
                problem = f"function error {response['FunctionError']} ({error_type or 'unknown type'})"
                continue
            try:
                expiry = datetime.fromisoformat(doc["expiration"].replace("Z", "+00:00"))
                if expiry.tzinfo is None:  # botocore compares it with an aware now
                    raise ValueError("expiration without a time zone")
                return {
                    "access_key": doc["accessKeyId"],
                    "secret_key": doc["secretAccessKey"],
                    "token": doc["sessionToken"],
                    "expiry_time": expiry.isoformat(),
                }
            except (TypeError, KeyError, AttributeError, ValueError):
                # Never echo the body: it may hold credentials.
                problem = "an answer without accessKeyId, secretAccessKey, sessionToken and an ISO-8601 expiration"
        raise CredentialsError(
            "CREDENTIALS_UNAVAILABLE",
            f"the mint function {self.function} gave no credentials for the {self.stage} stage after {MINT_ATTEMPTS} tries "
            f"(last: {problem}); retry the job, and report it if it persists",
        )


class _MintProvider(CredentialProvider):
    METHOD = "avatar-mint"
    CANONICAL_NAME = "AvatarMint"

    def __init__(self, credentials: DeferredRefreshableCredentials):
        self.credentials = credentials

    def load(self):
        return self.credentials


def job_session(
    stage: str | None, mint: MintCredentials | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> boto3.Session:
    """The boto3 session every S3 client of the job comes from.

    With AVATAR_MINT_FUNCTION set, the first credentials are minted here, so a refusal ends the stage
    before it starts; `mint` and `clock` are for tests (a stand-in's client, a clock to move).
    """
    function = os.environ.get(MINT_FUNCTION_ENV)
    if not function:
        return boto3.Session()
    mint = mint or MintCredentials(function, stage)
    credentials = DeferredRefreshableCredentials(refresh_using=mint, method=_MintProvider.METHOD, time_fetcher=clock)
    credentials.get_frozen_credentials()
    core = botocore.session.get_session()
    # First in the chain, so env or instance credentials never stand in for the job's.
    core.get_component("credential_provider").insert_before("env", _MintProvider(credentials))
    return boto3.Session(botocore_session=core)
