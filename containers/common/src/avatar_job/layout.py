"""The S3 key layout of a job, read from layout.json (generated from lambdas/shared/layout.ts).

Keys here are relative to the job prefix (`Job.key` adds it), except `JOB_PREFIX` and `MODELS`.
Templates name their variable parts `{name}`; `{epoch:06d}` is zero-padded, as in kohya's names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_DOC = json.loads(Path(__file__).with_name("layout.json").read_text())
TEMPLATES: dict[str, str] = _DOC["templates"]
_PLACEHOLDER = re.compile(r"\{([A-Za-z]+)(?::0(\d)d)?\}")

JOB_PREFIX = TEMPLATES["jobPrefix"]
MODELS = TEMPLATES["models"]
STATUS = TEMPLATES["status"]
MANIFEST = TEMPLATES["manifest"]
VALIDATE_REPORT = TEMPLATES["validateReport"]
CONTACT_SHEET = TEMPLATES["contactSheet"]
NORMALIZE = TEMPLATES["normalize"]
PLAN = TEMPLATES["plan"]
CAPTION = TEMPLATES["caption"]
CAPTIONS = TEMPLATES["captions"]
TRAIN = TEMPLATES["train"]
TRAIN_STATE = TEMPLATES["trainState"]
DIARY = TEMPLATES["diary"]
DATASET_TOML = TEMPLATES["datasetToml"]
CONFIG_TOML = TEMPLATES["configToml"]
EVALUATE = TEMPLATES["evaluate"]
GRID = TEMPLATES["grid"]
BASE = TEMPLATES["base"]
PACK = TEMPLATES["pack"]
PACK_SHEET = TEMPLATES["packSheet"]
SCORES = TEMPLATES["scores"]
REPORT = TEMPLATES["report"]


def fill(template: str, **values: str | int) -> str:
    """Fills a template's placeholders; each value must be one path segment (no "/", not "." or "..")."""

    def one(m: re.Match) -> str:
        name, width = m.group(1), m.group(2)
        if name not in values:
            raise KeyError(f"key template {template} needs {{{name}}}")
        text = str(values[name]).zfill(int(width)) if width else str(values[name])
        if text in ("", ".", "..") or "/" in text:
            raise ValueError(f"{{{name}}} of key template {template} must be one path segment, got {text!r}")
        return text

    return _PLACEHOLDER.sub(one, template)


def regex(template: str) -> re.Pattern:
    """Matches keys of a template, each placeholder captured by name (`{epoch:06d}` as six digits)."""
    out, last = "", 0
    for m in _PLACEHOLDER.finditer(template):
        out += re.escape(template[last : m.start()])
        out += rf"(?P<{m.group(1)}>\d{{{m.group(2)}}})" if m.group(2) else rf"(?P<{m.group(1)}>[^/]+)"
        last = m.end()
    return re.compile(out + re.escape(template[last:]))


def job_prefix(team_id: str, job_id: str) -> str:
    return fill(JOB_PREFIX, teamId=team_id, jobId=job_id)


def dataset_file(folder: str, name: str) -> str:
    """A dataset image or user caption normalize wrote into kohya's `<repeats>_<token>` folder."""
    return fill(TEMPLATES["datasetFile"], folder=folder, name=name)


def caption_folder(folder: str) -> str:
    return fill(TEMPLATES["captionFolder"], folder=folder)


def caption_file(folder: str, stem: str) -> str:
    return fill(TEMPLATES["captionFile"], folder=folder, stem=stem)


def checkpoint(name: str, epoch: int) -> str:
    """kohya's checkpoint after `epoch` (every epoch but the last)."""
    return fill(TEMPLATES["checkpoint"], name=name, epoch=epoch)


def final_model(name: str) -> str:
    """kohya's LoRA after the last epoch."""
    return fill(TEMPLATES["finalModel"], name=name)


def file_name(key: str) -> str:
    """The last segment of a key (kohya writes checkpoints under these names in its output dir)."""
    return key.rsplit("/", 1)[-1]


def checkpoint_epoch(name: str, file: str, epochs: int) -> int | None:
    """The epoch of a checkpoint file kohya wrote for output `name` (the final one: `epochs`), else None."""
    if file == file_name(final_model(name)):
        return epochs
    m = regex(file_name(TEMPLATES["checkpoint"])).fullmatch(file)
    return int(m["epoch"]) if m and m["name"] == name else None


def state_prefix(state: str) -> str:
    """Where one of kohya's state folders is published (its files under it, the manifest last)."""
    return fill(TEMPLATES["statePrefix"], state=state)


def state_manifest(state: str) -> str:
    return fill(TEMPLATES["stateManifest"], state=state)


def state_epoch(name: str, folder: str, epochs: int) -> int | None:
    """The epoch of a state folder kohya wrote for output `name` (the final one: `epochs`), else None."""
    if folder == fill(TEMPLATES["finalStateName"], name=name):
        return epochs
    m = regex(TEMPLATES["stateName"]).fullmatch(folder)
    return int(m["epoch"]) if m and m["name"] == name else None


def cell(file: str) -> str:
    """One grid cell's image under evaluate/."""
    return fill(TEMPLATES["cell"], file=file)


def pack_image(file: str) -> str:
    return fill(TEMPLATES["packImage"], file=file)


def checkpoints(name: str, epochs: int) -> list[str]:
    """Every checkpoint key kohya's run of `epochs` epochs writes, in epoch order, the final one last."""
    return [checkpoint(name, e) for e in range(1, epochs)] + [final_model(name)]
