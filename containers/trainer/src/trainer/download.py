"""What an attempt needs before kohya starts: the dataset normalize and caption wrote, and the
newest resume state a previous attempt of the same job published (see publish.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path, PurePosixPath

from avatar_job import Job, StageError, Status, layout

from .verify import sha256


def download_dataset(job: Job, status: Status, plan: dict, dataset_dir: Path) -> None:
    """Each image and its caption into kohya's `<repeats>_<token>` folder under `dataset_dir`."""
    folder = plan["plan"]["folder"]
    target = dataset_dir / folder
    for i, image in enumerate(plan["images"]):
        stem = PurePosixPath(image).stem
        job.download(layout.dataset_file(folder, image), target / image)
        try:
            job.download(layout.caption_file(folder, stem), target / f"{stem}.txt")
        except StageError as e:
            raise StageError("MISSING_INPUT", f"no caption for {image}; run the caption stage first", e.input) from e
        if i % 10 == 0:
            status.progress(0.01, f"downloading the dataset ({i + 1}/{len(plan['images'])})")


def find_resume_state(job: Job, output_name: str, epochs: int, output_dir: Path) -> tuple[Path, int] | None:
    """Downloads the newest complete state a previous attempt published into `output_dir`, if any:
    (its folder, its epoch)."""
    keys = set(job.list(layout.TRAIN_STATE))
    folders = {k[len(layout.TRAIN_STATE) :].split("/")[0] for k in keys if "/" in k[len(layout.TRAIN_STATE) :]}
    complete = {name for name in folders if layout.state_manifest(name) in keys}
    for name in sorted(folders - complete):
        manifest = layout.file_name(layout.state_manifest(name))
        print(f"train: ignoring {layout.state_prefix(name).rstrip('/')}: it has no {manifest}, so its upload never finished", flush=True)
    ranked = sorted((e, n) for n in complete if (e := layout.state_epoch(output_name, n, epochs)) is not None)
    for epoch, name in reversed(ranked):
        try:
            _download_state(job, name, output_dir / name)
        except StageError as e:
            print(f"train: not resuming from {name}: {e}", file=sys.stderr, flush=True)
            # Left in the output folder, it would pass for a state kohya had written.
            shutil.rmtree(output_dir / name, ignore_errors=True)
            continue
        return output_dir / name, epoch
    return None


def _download_state(job: Job, name: str, target: Path) -> None:
    """Every file the state's manifest lists, each checked against its size and sha256."""
    marker = layout.state_manifest(name)
    try:
        files = json.loads(job.get_bytes(marker))["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise StageError("STATE_INVALID", f"{marker} is not a state manifest ({e})", marker) from e
    prefix = layout.state_prefix(name)
    for entry in files:
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or ".." in rel.parts or prefix + rel.as_posix() == marker:
            raise StageError("STATE_INVALID", f"{marker} lists the path {rel}", marker)
        dest = target / rel
        job.download(prefix + rel.as_posix(), dest)
        if dest.stat().st_size != entry["size"] or sha256(dest) != entry["sha256"]:
            raise StageError("STATE_INVALID", f"{prefix}{rel} differs from its size or sha256 in {layout.file_name(marker)}", str(rel))
