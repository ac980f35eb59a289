"""The caption stage: BLIP captions for the dataset images, the trigger-word prefix, user captions kept."""

from __future__ import annotations

import io
import json
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError

from avatar_job import Job, StageError, Status, layout

from . import blip
from .text import ensure_prefix, remove_traits, render_prefix


def _open_image(data: bytes, name: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except (UnidentifiedImageError, OSError) as e:
        raise StageError("BAD_IMAGE", f"cannot decode {name} ({e}); rerun normalize or remove the photo", name) from e


def already_captioned(job: Job, plan: dict, prefix: str) -> bool:
    """True when an earlier attempt of this job captioned exactly this plan.

    captions.json is written last, after every caption file, so its presence with the same folder,
    prefix and images means the stage finished; a retried caption+train job then skips BLIP. Any
    doubt (missing, unreadable, another plan, a caption file gone) means caption again.
    """
    folder = plan["plan"]["folder"]
    try:
        done = json.loads(job.get_bytes(layout.CAPTIONS))
        written = {PurePosixPath(k).name for k in job.list(layout.caption_folder(folder))}
    except (StageError, ValueError, job.s3.exceptions.ClientError):
        return False
    stems = [f"{PurePosixPath(n).stem}.txt" for n in plan["images"]]
    return (
        (done.get("folder"), done.get("prefix")) == (folder, prefix)
        and [c.get("image") for c in done.get("captions", [])] == plan["images"]
        and set(stems) <= written
    )


def caption_stage(job: Job, status: Status) -> None:
    plan = job.load_plan()
    spec, folder = plan["spec"], plan["plan"]["folder"]
    settings = spec["captioning"]
    prefix = render_prefix(settings["prefix"], spec["token"], spec["classWord"])
    if already_captioned(job, plan, prefix):
        print(f"caption: {layout.CAPTIONS} already covers the {len(plan['images'])} images of this plan; not captioning again", flush=True)
        status.progress(1.0, f"captions already written for {len(plan['images'])} images (an earlier attempt)", force=True)
        return
    user = set(plan["userCaptions"])
    images = plan["images"]
    stem = {name: PurePosixPath(name).stem for name in images}

    captions: dict[str, tuple[str, str]] = {}
    for name in images:
        if name in user:
            rel = layout.dataset_file(folder, f"{stem[name]}.txt")
            # kohya reads only the first line of a caption file.
            text = job.get_bytes(rel).decode("utf-8", errors="replace").strip().splitlines()
            if not text or not text[0].strip():
                raise StageError(
                    "EMPTY_CAPTION", f"the user caption for {name} is empty; write a caption or drop it from userCaptions", rel
                )
            captions[name] = (ensure_prefix(text[0], prefix), "user")

    todo = [n for n in images if n not in user]
    if todo:
        path = blip.model_dir()
        if not (path / "config.json").is_file():
            raise StageError(
                "MODEL_MISSING", f"no BLIP model at {path}; the captioner image must bake it in (or set AVATAR_BLIP_MODEL_DIR)", str(path)
            )
        status.progress(0.05, "loading BLIP", force=True)
        model = blip.Blip(path)
        s = blip.Settings(settings["numBeams"], settings["minLength"], settings["maxLength"])
        for i in range(0, len(todo), s.batch_size):
            batch = todo[i : i + s.batch_size]
            pictures = [_open_image(job.get_bytes(layout.dataset_file(folder, n)), n) for n in batch]
            for name, text in zip(batch, model.caption(pictures, s), strict=True):
                captions[name] = (ensure_prefix(remove_traits(text, settings["commonTraits"]), prefix), "blip")
            done = i + len(batch)
            status.progress(0.1 + 0.85 * done / len(todo), f"captioned {done}/{len(todo)} images")

    for name in images:
        job.put_bytes(layout.caption_file(folder, stem[name]), (captions[name][0] + "\n").encode(), "text/plain; charset=utf-8")
    job.put_json(
        layout.CAPTIONS,
        {
            "folder": folder,
            "prefix": prefix,
            "commonTraits": settings["commonTraits"],
            "captions": [{"image": n, "caption": captions[n][0], "source": captions[n][1]} for n in images],
        },
    )
    status.progress(1.0, f"wrote {len(images)} captions ({len(todo)} by BLIP, {len(images) - len(todo)} from the user)", force=True)
