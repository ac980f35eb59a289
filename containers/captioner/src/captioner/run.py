"""The caption stage: BLIP captions for the dataset images, the trigger-word prefix, user captions kept."""
from __future__ import annotations

import io
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
        raise StageError("BAD_IMAGE", f"cannot decode {name} ({e}); rerun normalize or remove the photo", name)


def caption_stage(job: Job, status: Status) -> None:
    plan = job.load_plan()
    spec, folder = plan["spec"], plan["plan"]["folder"]
    settings = spec["captioning"]
    prefix = render_prefix(settings["prefix"], spec["token"], spec["classWord"])
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
                raise StageError("EMPTY_CAPTION", f"the user caption for {name} is empty; write a caption or drop it from userCaptions", rel)
            captions[name] = (ensure_prefix(text[0], prefix), "user")

    todo = [n for n in images if n not in user]
    if todo:
        path = blip.model_dir()
        if not (path / "config.json").is_file():
            raise StageError("MODEL_MISSING", f"no BLIP model at {path}; the captioner image must bake it in (or set AVATAR_BLIP_MODEL_DIR)", str(path))
        status.progress(0.05, "loading BLIP", force=True)
        model = blip.Blip(path)
        s = blip.Settings(settings["numBeams"], settings["minLength"], settings["maxLength"])
        for i in range(0, len(todo), s.batch_size):
            batch = todo[i : i + s.batch_size]
            pictures = [_open_image(job.get_bytes(layout.dataset_file(folder, n)), n) for n in batch]
            for name, text in zip(batch, model.caption(pictures, s)):
                captions[name] = (ensure_prefix(remove_traits(text, settings["commonTraits"]), prefix), "blip")
            done = i + len(batch)
            status.progress(0.1 + 0.85 * done / len(todo), f"captioned {done}/{len(todo)} images")

    for name in images:
        job.put_bytes(layout.caption_file(folder, stem[name]), (captions[name][0] + "\n").encode(), "text/plain; charset=utf-8")
    job.put_json(layout.CAPTIONS, {
        "folder": folder,
        "prefix": prefix,
        "commonTraits": settings["commonTraits"],
        "captions": [{"image": n, "caption": captions[n][0], "source": captions[n][1]} for n in images],
    })
    status.progress(1.0, f"wrote {len(images)} captions ({len(todo)} by BLIP, {len(images) - len(todo)} from the user)", force=True)
