"""Reads kohya's console output (docs/kohya.md, Progress lines) into progress events.

Checked against a real sd-scripts run: tests/fixtures/kohya-transcript.{out,err}.txt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EPOCH = re.compile(r"\bepoch (\d+)/(\d+)\b")
# tqdm: "steps:  12%|█▏   | 225/1875 [00:30<03:40, 7.50it/s, avr_loss=0.0912]"
STEPS = re.compile(r"steps:.*?(\d+)/(\d+)\s*\[[^\]]*?avr_loss=([-+0-9.eEnaifNAIF]+)")
SAVING = re.compile(r"saving checkpoint:\s*(\S+)")
TOTAL = re.compile(r"total optimization steps[^:\d]*:\s*(\d+)")
# The logger (stderr), before accelerator.save_state: "saving state at epoch 1", "saving last state."
STATE = re.compile(r"\bsaving (?:state at epoch (\d+)\b|last state\.)")


@dataclass
class Event:
    kind: str  # epoch | step | checkpoint | total | state (epoch None: the last state)
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    path: str | None = None


def split_lines(buffer: str) -> tuple[list[str], str]:
    """Splits on both newline and tqdm's carriage return; returns complete lines and the rest."""
    parts = re.split(r"\r\n|\r|\n", buffer)
    return [p for p in parts[:-1] if p.strip()], parts[-1]


def parse_line(line: str) -> Event | None:
    if m := STEPS.search(line):
        return Event("step", step=int(m[1]), total=int(m[2]), loss=float(m[3]))
    if m := SAVING.search(line):
        return Event("checkpoint", path=m[1])
    if m := TOTAL.search(line):
        return Event("total", total=int(m[1]))
    if m := STATE.search(line):
        return Event("state", epoch=int(m[1]) if m[1] else None)
    if m := EPOCH.search(line):
        return Event("epoch", epoch=int(m[1]), epochs=int(m[2]))
    return None
