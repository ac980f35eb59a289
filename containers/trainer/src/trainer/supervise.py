"""Runs kohya as a child process and follows it: progress from its output, publishing as it writes,
and a clean stop on SIGTERM (a Spot reclaim) that keeps what it finished."""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from avatar_job import Interrupted, StageError, Status, stop_timeout_s
from avatar_job.credentials import SECRET_ENV

from .progress import Event, parse_line, split_lines
from .publish import Publisher

SCAN_INTERVAL_S = 2.0
LOG_THROTTLE_S = 15.0


def kill_grace_s() -> float:
    """How long kohya gets to exit after SIGTERM before SIGKILL.

    A quarter of the container's own stop timeout (at most 30 s), so after a Spot reclaim's SIGTERM
    the rest is left to upload the finished checkpoints and state and to write status.json. kohya
    has no SIGTERM handler: a half-written state is never used, so nothing is lost by not waiting.
    """
    return min(30.0, stop_timeout_s() / 4)


class Supervisor:
    """Follows one kohya process: its epoch, step and loss, and what it has finished writing."""

    def __init__(self, status: Status, plan: dict, publisher: Publisher, resumed_epoch: int = 0):
        self.status, self.publisher = status, publisher
        self.epochs = plan["plan"]["epochs"]
        self.total = plan["plan"]["totalSteps"]
        # kohya counts steps from 0 again after --resume (see kohya.launch_command): its tqdm shows
        # 1/T for the first step after the resumed epochs.
        self.epoch = self.resumed_epoch = resumed_epoch
        self.step = 0
        self.loss: float | None = None
        self.terminated = False
        self.tail: list[str] = []
        self.no_data_logged = False

    # ---- progress ----
    def on_event(self, ev: Event) -> None:
        pub = self.publisher
        if ev.kind == "total" and ev.total:
            self.total = ev.total
        elif ev.kind == "epoch":
            self.epoch = max(self.epoch, ev.epoch)
            # kohya prints "epoch n/N" after finishing everything it saves for epoch n-1.
            pub.proven = max(pub.proven, 2 * (ev.epoch - 1))
            self.status.progress(self._fraction(), f"epoch {ev.epoch}/{ev.epochs}", force=True, **self.fields())
        elif ev.kind == "step":
            step = min(ev.total, ev.step + self.resumed_epoch * ev.total // self.epochs)
            self.step, self.total, self.loss = step, ev.total, ev.loss
            if not math.isfinite(ev.loss):
                raise StageError(
                    "NAN_LOSS",
                    f"the loss became {ev.loss} at step {step}/{ev.total} (epoch {self.epoch}); "
                    "lower training.unetLr/textEncoderLr, or use mixedPrecision bf16 instead of fp16, and retry",
                    "spec.training",
                )
            # stdout ("epoch n/N") and stderr (tqdm) arrive unordered, so the step, not the newest
            # "epoch" line, decides which epoch a loss belongs to.
            step_epoch = math.ceil(step * self.epochs / ev.total) if ev.total else self.epoch
            self.epoch = max(self.epoch, step_epoch)
            if step_epoch:
                pub.diary["lossPerEpoch"][str(step_epoch)] = ev.loss
            self.status.progress(self._fraction(), f"step {step}/{ev.total}", **self.fields())
        elif ev.kind == "checkpoint":
            self.status.progress(self._fraction(), f"saving {Path(ev.path).name}", force=True, **self.fields())
        elif ev.kind == "state":
            # Logged once the epoch's checkpoint is written, before its state folder (the last
            # state: once every epoch before the last is saved).
            pub.proven = max(pub.proven, 2 * ev.epoch - 1 if ev.epoch else 2 * (self.epochs - 1))
            self.status.progress(self._fraction(), f"saving the resume state of epoch {ev.epoch or self.epochs}", **self.fields())

    def _fraction(self) -> float:
        return 0.02 + 0.96 * (self.step / self.total if self.total else 0.0)

    def fields(self) -> dict:
        """The progress fields of status.json."""
        return {"epoch": self.epoch or None, "epochs": self.epochs, "step": self.step, "totalSteps": self.total, "loss": self.loss}

    # ---- the child process ----
    def launch(self, cmd: list[str], cwd: Path | None) -> int:
        """Runs kohya to its exit code; raises Interrupted on SIGTERM and StageError on a bad run."""
        # kohya needs no S3 and no mint: the job secret stays in this process.
        env = {k: v for k, v in os.environ.items() if k != SECRET_ENV} | {"PYTHONUNBUFFERED": "1"}
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
                    self._drain(proc, lines, readers)
                    self.publisher.publish()
                    raise Interrupted(self.resume_note())
                try:
                    stream, line = lines.get(timeout=0.5)
                except queue.Empty:
                    stream = None
                if stream and line is None:
                    open_streams -= 1
                elif stream:
                    last_log = self._follow(proc, stream, line, last_log)
                if time.monotonic() - last_scan > SCAN_INTERVAL_S:
                    self._guarded(proc, self.publisher.publish)
                    last_scan = time.monotonic()
            return proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if proc.poll() is None:
                self._stop(proc)

    def _drain(self, proc: subprocess.Popen, lines: queue.Queue, readers: list[threading.Thread]) -> None:
        """Acts on what kohya printed before it stopped and is not read yet.

        stdout and stderr are read by separate threads, so a step line (stderr) can still be on its
        way when the "epoch n/N" after it (stdout) has been handled: the interrupted status and what
        counts as finished must not depend on which reader ran first. kohya's group is gone, so the
        readers reach end of file; the timeout covers a stray process that kept a pipe open.
        """
        for r in readers:
            r.join(timeout=5)
        last_log = 0.0
        while True:
            try:
                stream, line = lines.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                try:
                    last_log = self._follow(proc, stream, line, last_log)
                except StageError as e:  # a NaN loss: the stop goes on; the retry meets it again
                    print(f"train: {e} (while stopping)", file=sys.stderr, flush=True)

    def _follow(self, proc: subprocess.Popen, stream: str, line: str, last_log: float) -> float:
        """Echoes a line (step lines throttled), keeps the tail for errors, and acts on its event.
        Returns when a step line was last echoed."""
        ev = parse_line(line)
        if ev is None or ev.kind != "step" or time.monotonic() - last_log > LOG_THROTTLE_S:
            print(f"kohya: {line}", file=sys.stderr if stream == "err" else sys.stdout, flush=True)
            last_log = time.monotonic() if ev and ev.kind == "step" else last_log
        self.tail = (self.tail + [line])[-20:]
        self.no_data_logged |= "No data found" in line
        if ev:
            self._guarded(proc, lambda: self.on_event(ev))
        return last_log

    def _guarded(self, proc: subprocess.Popen, action) -> None:
        """A StageError stops kohya before it propagates."""
        try:
            action()
        except StageError:
            self._stop(proc)
            raise

    def resume_note(self) -> str:
        state_epoch = self.publisher.state_epoch
        if not state_epoch:
            return "trains again from epoch 1 (no state was finished yet)"
        return f"resumes at epoch {state_epoch + 1} of {self.epochs} from the saved state of epoch {state_epoch}"

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
