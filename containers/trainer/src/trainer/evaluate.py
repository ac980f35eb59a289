"""The evaluate stage: the X/Y grid of docs/training.md, scores, a recommended checkpoint and strength, the avatar pack, a report.

Reads normalize/plan.json, the training photos under normalize/<folder>/, the checkpoints under train/
(named from the plan: the evaluate role cannot list the bucket) and, for the report, train/diary.json,
validate/contact-sheet.png, caption/captions.json and status.json when present. Writes only under evaluate/:
- grid.png (grid-<i>.png per grid prompt): columns the checkpoints in epoch order, final last, rows the
  strengths in spec order, the recommended cell outlined; base.png (base-<i>.png): the base model alone;
- cells/<outputName>-e<epoch>-s<strength>.png per grid cell (with -p<i> when there are several prompts);
- pack/<outputName>-<n>-seed<seed>.png: every pack prompt (prompt_sets.py) at the recommended checkpoint
  and strength, several seeds each, and pack.png, their contact sheet;
- scores.json: every score defined next to its value (scores.py), per cell, per pair, and the
  recommendation (recommend.py) with its A1111 tag; report.html (report.py).

The base pipeline is loaded once; each checkpoint is loaded as a PEFT adapter (diffusers converts
kohya's lora_unet_/lora_te_ keys), rendered at every strength, then unloaded.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from avatar_job import Job, StageError, Status, layout, now

from . import prompt_sets, recommend, report, scores
from .render import contact_sheet, grid, outline
from .verify import read_header, sha256

ADAPTER = "checkpoint"
DEFAULT_SD_CONFIG_DIR = "/opt/sd15-config"
# scheduler class and the arguments that make it the named sampler (kohya/A1111 names).
SAMPLERS = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
}
METRIC = (
    "meanAbsDiffFromBase: the mean absolute difference, over every pixel and RGB channel in 0-255 units, "
    "between the cell's image and the base model's image (no LoRA) for the same prompt, seed and settings. "
    "It measures how strongly the LoRA changes the render, not quality or likeness: 0 means no effect, and it "
    "normally rises with strength and with training epochs. Judge likeness and overfitting from the grid."
)


@dataclass(frozen=True)
class Checkpoint:
    name: str
    epoch: int
    final: bool
    rel: str

    @property
    def label(self) -> str:
        return f"{PurePosixPath(self.name).stem} (e{self.epoch})"


def checkpoints(plan: dict) -> list[Checkpoint]:
    """kohya's names (docs/kohya.md, Outputs; keys from avatar_job.layout): one per epoch before the last, then the final file."""
    name, epochs = plan["outputName"], plan["plan"]["epochs"]
    return [Checkpoint(layout.file_name(key), e, e == epochs, key) for e, key in enumerate(layout.checkpoints(name, epochs), start=1)]


def prompts(plan: dict) -> list[str]:
    """The grid's prompts. An A1111 tag such as <lora:last:1.0> would only reach the text encoder as words: strength is applied here."""
    return [prompt_sets.fill(p, plan["spec"]) for p in plan["spec"]["evaluation"]["prompts"]]


def strength_label(s: float) -> str:
    return f"{s:.2f}"


def cell_rel(output_name: str, ckpt: Checkpoint, strength: float, prompt_index: int, n_prompts: int) -> str:
    suffix = f"-p{prompt_index}" if n_prompts > 1 else ""
    return layout.cell(f"{output_name}-e{ckpt.epoch}-s{strength_label(strength)}{suffix}.png")


def numbered(rel: str, index: int, count: int) -> str:
    """evaluate/grid.png for one prompt; evaluate/grid-0.png, grid-1.png ... for several."""
    if count == 1:
        return rel
    stem, ext = rel.rsplit(".", 1)
    return f"{stem}-{index}.{ext}"


# ---- inputs ----
def head_checkpoints(job: Job, ckpts: list[Checkpoint]) -> dict[str, dict]:
    """Fails before any model is loaded if a checkpoint is missing."""
    heads = {}
    for c in ckpts:
        try:
            heads[c.name] = job.s3.head_object(Bucket=job.artifacts_bucket, Key=job.key(c.rel))
        except job.s3.exceptions.ClientError as e:
            # Without ListBucket, S3 answers 403 rather than 404 for a missing key.
            code = e.response.get("Error", {}).get("Code", "?")
            raise StageError(
                "MISSING_CHECKPOINT",
                f"s3://{job.artifacts_bucket}/{job.key(c.rel)} is missing or unreadable ({code}); "
                f"the train stage must publish all {len(ckpts)} checkpoints first",
                c.rel,
            ) from e
    return heads


def download_checkpoint(job: Job, ckpt: Checkpoint, head: dict, workdir: Path) -> Path:
    path = workdir / ckpt.name
    job.download(ckpt.rel, path)
    expected = head.get("Metadata", {}).get("sha256")  # set by the train stage when it published the file
    if expected and sha256(path) != expected:
        raise StageError("CHECKPOINT_CORRUPT", f"{ckpt.name} differs from the sha256 the train stage recorded; rerun training", ckpt.rel)
    read_header(path)  # a torn or non-safetensors file fails here with CHECKPOINT_INVALID
    return path


def load_training_photos(job: Job, plan: dict) -> list[Any]:
    """The dataset images normalize wrote, decoded (likeness and near-copy compare against them)."""
    from PIL import Image

    folder, out = plan["plan"]["folder"], []
    for name in plan["images"]:
        try:
            rel = layout.dataset_file(folder, name)
        except ValueError:
            raise StageError(
                "INVALID_DATASETPLAN", f"image name {name!r} is not a plain file name; rerun the normalize stage", layout.PLAN
            ) from None
        try:
            with Image.open(io.BytesIO(job.get_bytes(rel))) as im:
                out.append(im.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as e:
            raise StageError("TRAINING_PHOTO_UNREADABLE", f"{rel} cannot be decoded ({e}); rerun the normalize stage", rel) from e
    return out


def optional_input(job: Job, rel: str) -> bytes | None:
    """An earlier stage's artifact the report shows when it exists (absent or unreadable: the report says so)."""
    try:
        return job.get_bytes(rel)
    except StageError:
        return None
    except job.s3.exceptions.ClientError as e:  # 403 without ListBucket when the key is missing
        print(f"evaluate: {rel} not read ({e.response.get('Error', {}).get('Code', '?')}); the report leaves it out", flush=True)
        return None


def optional_json(job: Job, rel: str) -> dict | None:
    body = optional_input(job, rel)
    try:
        doc = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


# ---- the model ----
def _device_dtype():
    import torch

    # fp16 halves memory and time on a GPU; CPU kernels want fp32.
    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


def load_pipeline(job: Job) -> tuple[Any, dict]:
    """The base StableDiffusionPipeline, and a description of where it came from.

    Production: the SD1.5 single-file checkpoint (the same verified host cache as training) with the
    diffusers configs and tokenizer baked into the image, so nothing reaches the hub.
    AVATAR_EVAL_PIPELINE_DIR: a diffusers-format folder instead (tests use a tiny one).
    """
    from diffusers import StableDiffusionPipeline

    device, dtype = _device_dtype()
    common = dict(torch_dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True)
    folder = os.environ.get("AVATAR_EVAL_PIPELINE_DIR")
    if folder:
        pipe = StableDiffusionPipeline.from_pretrained(folder, **common)
        source = {"pipelineDir": folder}
    else:
        from .train import fetch_base_model

        config = os.environ.get("AVATAR_SD_CONFIG_DIR") or DEFAULT_SD_CONFIG_DIR
        if not (Path(config) / "model_index.json").is_file():
            raise StageError(
                "SD_CONFIG_MISSING",
                f"no diffusers SD1.5 config at {config}; the trainer image bakes it in, set AVATAR_SD_CONFIG_DIR",
                "AVATAR_SD_CONFIG_DIR",
            )
        base = fetch_base_model(job)
        pipe = StableDiffusionPipeline.from_single_file(str(base["path"]), config=config, **common)
        source = {"key": base["key"], "sha256": base["sha256"], "config": config}
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**source, "device": device, "dtype": str(dtype).removeprefix("torch.")}


def set_sampler(pipe: Any, sampler: str) -> None:
    import diffusers

    cls, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **extra)


class Renderer:
    """One image per call with spec.evaluation's settings and a fresh generator at its seed."""

    def __init__(self, pipe: Any, evaluation: dict):
        self.pipe, self.ev = pipe, evaluation

    def __call__(self, prompt: str, seed: int | None = None):
        """(uint8 pixels, whether the render had NaN/inf: those pixels are black and the image is scored broken)."""
        import numpy as np
        import torch

        ev = self.ev
        # A CPU generator gives the same starting noise on any device, so seeds mean the same everywhere.
        generator = torch.Generator("cpu").manual_seed(ev["seed"] if seed is None else seed)
        with torch.inference_mode():
            out = self.pipe(
                prompt=prompt,
                negative_prompt=ev["negativePrompt"] or None,
                num_inference_steps=ev["steps"],
                guidance_scale=ev["cfgScale"],
                width=ev["width"],
                height=ev["height"],
                generator=generator,
                output_type="np",
            )
        image = out.images[0]
        # NaN/inf (fp16 overflow, a diverged checkpoint) marks this one cell broken; the others may be fine.
        finite = np.isfinite(image)
        return (np.where(finite, image, 0).clip(0, 1) * 255).round().astype(np.uint8), not bool(finite.all())


def load_lora(pipe: Any, path: Path, ckpt: Checkpoint) -> None:
    try:
        # A directory plus weight_name: with HF_HUB_OFFLINE=1 diffusers refuses a bare file path.
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER, local_files_only=True)
    except Exception as e:  # diffusers raises ValueError/KeyError/RuntimeError for keys or shapes it cannot map
        raise StageError(
            "CHECKPOINT_UNLOADABLE", f"diffusers could not load {ckpt.name} onto the base model ({type(e).__name__}: {e})", ckpt.rel
        ) from e
    if ADAPTER not in pipe.get_list_adapters().get("unet", []):
        raise StageError("CHECKPOINT_UNLOADABLE", f"{ckpt.name} holds no U-Net LoRA modules diffusers recognises", ckpt.rel)


def set_strength(pipe: Any, strength: float) -> None:
    # The adapter weight multiplies the LoRA's alpha/rank scaling in the U-Net and the text encoder
    # alike, as A1111's <lora:name:strength> and kohya's --network_mul do; 0 disables it.
    pipe.set_adapters([ADAPTER], adapter_weights=[strength])


def _png(pixels) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _versions() -> dict:
    out = {}
    for dist in ("torch", "diffusers", "transformers", "peft"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---- the stage ----
def evaluate_stage(job: Job, status: Status) -> None:
    started = now()
    plan = job.load_plan()
    spec = plan["spec"]
    ev, kind, name = spec["evaluation"], spec["kind"], plan["outputName"]
    if spec["training"]["network"] == "loha":
        raise StageError(
            "EVALUATE_UNSUPPORTED_NETWORK",
            "diffusers cannot load LoHa checkpoints; test them by hand in A1111 (docs/training.md, Reading the grid)",
            "spec.training.network",
        )
    ckpts = checkpoints(plan)
    texts = prompts(plan)
    strengths = ev["strengths"]
    pack_texts, seeds = prompt_sets.pack_prompts(spec), prompt_sets.pack_seeds(spec)
    heads = head_checkpoints(job, ckpts)
    photo_images = load_training_photos(job, plan)

    import numpy as np
    from PIL import Image

    status.progress(0.01, "loading the base model and the scoring model", force=True)
    pipe, source = load_pipeline(job)
    set_sampler(pipe, ev["sampler"])
    render = Renderer(pipe, ev)
    scorer = scores.Scorer()
    photos = scorer.photos(photo_images, kind)
    workdir = Path(os.environ.get("AVATAR_WORK_DIR") or tempfile.mkdtemp(prefix="avatar-evaluate-")) / "evaluate"
    workdir.mkdir(parents=True, exist_ok=True)

    total = len(texts) * (1 + len(ckpts) * len(strengths)) + len(pack_texts) * len(seeds)
    done = 0

    def rendered(what: str, ckpt: Checkpoint | None = None) -> None:
        nonlocal done
        done += 1
        status.progress(
            0.03 + 0.9 * done / total,
            f"rendered {done}/{total} ({what})",
            **({"epoch": ckpt.epoch, "epochs": plan["plan"]["epochs"]} if ckpt else {}),
        )

    base, base_nan = [], []
    for i, text in enumerate(texts):
        pixels, nan = render(text)
        base.append(pixels)
        base_nan.append(nan)
        job.put_bytes(numbered(layout.BASE, i, len(texts)), _png(pixels), "image/png")
        rendered("base model")

    cells: list[dict] = []
    images: dict[tuple[int, int, int], Any] = {}  # (prompt, strength row, checkpoint column) -> pixels
    nans: list[bool] = []
    for col, ckpt in enumerate(ckpts):
        path = download_checkpoint(job, ckpt, heads[ckpt.name], workdir)
        load_lora(pipe, path, ckpt)
        for row, strength in enumerate(strengths):
            set_strength(pipe, strength)
            for i, text in enumerate(texts):
                pixels, nan = render(text)
                rel = cell_rel(name, ckpt, strength, i, len(texts))
                job.put_bytes(rel, _png(pixels), "image/png")
                images[i, row, col] = pixels
                nans.append(nan)
                diff = float(np.abs(pixels.astype(np.int16) - base[i].astype(np.int16)).mean())
                cells.append(
                    {
                        "checkpoint": ckpt.name,
                        "epoch": ckpt.epoch,
                        "final": ckpt.final,
                        "strength": strength,
                        "prompt": text,
                        "promptIndex": i,
                        "seed": ev["seed"],
                        "image": rel,
                        "meanAbsDiffFromBase": round(diff, 4),
                        "_at": (i, row, col),
                    }
                )
                rendered(f"{ckpt.name} at strength {strength_label(strength)}", ckpt)
        pipe.unload_lora_weights()
        path.unlink()

    status.progress(0.03 + 0.9 * done / total, "scoring the grid", force=True)
    base_scores = scorer.score(base, texts, photos, kind, base_nan)
    for cell, sc in zip(
        cells, scorer.score([images[c["_at"]] for c in cells], [c["prompt"] for c in cells], photos, kind, nans), strict=True
    ):
        cell.update(sc)
    table = recommend.pairs(cells)
    doc = {
        "teamId": job.team_id,
        "jobId": job.job_id,
        "outputName": name,
        "kind": kind,
        "createdAt": now(),
        "metrics": {**scores.DEFINITIONS, "meanAbsDiffFromBase": METRIC},
        "scoringModel": {
            "name": scores.CLIP_MODEL,
            "licence": scores.CLIP_LICENCE,
            "revision": os.environ.get("AVATAR_CLIP_REVISION"),
            "dir": scorer.model_dir,
        },
        "settings": {
            **{k: ev[k] for k in ("negativePrompt", "steps", "cfgScale", "sampler", "seed", "width", "height")},
            "strengthApplied": "diffusers/PEFT adapter weight on the U-Net and text-encoder LoRA layers (set_adapters)",
        },
        "baseModel": source,
        "versions": _versions(),
        "prompts": texts,
        "trainingPhotos": len(photo_images),
        "base": [{"prompt": t, "image": numbered(layout.BASE, i, len(texts)), **base_scores[i]} for i, t in enumerate(texts)],
        "checkpoints": [
            {"name": c.name, "epoch": c.epoch, "final": c.final, "sha256": heads[c.name].get("Metadata", {}).get("sha256")} for c in ckpts
        ],
        "grids": [],
        "cells": [{k: v for k, v in c.items() if k != "_at"} for c in cells],
        "pairs": table,
        "recommendation": None,
    }
    try:
        rec = recommend.recommend(table, plan["plan"]["epochs"])
    except StageError:
        # The scores that led here stay readable for whoever investigates.
        job.put_json(layout.SCORES, doc)
        raise
    doc["recommendation"] = rec

    chosen = next(c for c in ckpts if c.name == rec["checkpoint"])
    grid_pngs = []
    for i, text in enumerate(texts):
        rel = numbered(layout.GRID, i, len(texts))
        picture = grid(
            [[Image.fromarray(images[i, r, c]) for c in range(len(ckpts))] for r in range(len(strengths))],
            [c.label for c in ckpts],
            [f"strength {strength_label(s)}" for s in strengths],
        )
        picture = outline(picture, (ev["width"], ev["height"]), strengths.index(rec["strength"]), ckpts.index(chosen))
        grid_pngs.append(_encode(picture))
        job.put_bytes(rel, grid_pngs[-1], "image/png")
        doc["grids"].append(
            {
                "image": rel,
                "prompt": text,
                "promptIndex": i,
                "base": numbered(layout.BASE, i, len(texts)),
                "columns": [c.name for c in ckpts],
                "rows": strengths,
                "outlined": {"column": ckpts.index(chosen), "row": strengths.index(rec["strength"])},
            }
        )

    # The avatar pack: the recommended checkpoint and strength, every pack prompt, several seeds.
    path = download_checkpoint(job, chosen, heads[chosen.name], workdir)
    load_lora(pipe, path, chosen)
    set_strength(pipe, rec["strength"])
    pack, pack_pixels, pack_nan = [], [], []
    for n, text in enumerate(pack_texts):
        for seed in seeds:
            pixels, nan = render(text, seed)
            rel = layout.pack_image(f"{name}-{n + 1:02d}-seed{seed}.png")
            job.put_bytes(rel, _png(pixels), "image/png")
            pack.append({"prompt": text, "promptIndex": n, "seed": seed, "image": rel})
            pack_pixels.append(pixels)
            pack_nan.append(nan)
            rendered(f"avatar pack with {chosen.name} at strength {strength_label(rec['strength'])}", chosen)
    pipe.unload_lora_weights()
    path.unlink()
    for item, sc in zip(pack, scorer.score(pack_pixels, [p["prompt"] for p in pack], photos, kind, pack_nan), strict=True):
        item.update(sc)
    sheet = _encode(
        contact_sheet(
            [Image.fromarray(p) for p in pack_pixels],
            [f"{p['promptIndex'] + 1}. seed {p['seed']}" for p in pack],
            columns=min(4, 2 * len(seeds)),
        )
    )
    job.put_bytes(layout.PACK_SHEET, sheet, "image/png")
    doc["pack"] = {
        "checkpoint": chosen.name,
        "strength": rec["strength"],
        "tag": rec["tag"],
        "prompts": pack_texts,
        "seeds": seeds,
        "contactSheet": layout.PACK_SHEET,
        "images": pack,
    }
    doc["report"] = layout.REPORT
    job.put_json(layout.SCORES, doc)

    diary = optional_json(job, layout.DIARY)
    html = report.build(
        scores=doc,
        grid_pngs=grid_pngs,
        pack_png=sheet,
        contact_sheet_png=optional_input(job, layout.CONTACT_SHEET),
        captions=optional_json(job, layout.CAPTIONS),
        diary=diary,
        times=report.stage_times(status.created_at, diary, started, now()),
    )
    job.put_bytes(layout.REPORT, html.encode(), "text/html; charset=utf-8")
    status.progress(
        1.0,
        f"evaluated {len(ckpts)} checkpoints x {len(strengths)} strengths x {len(texts)} prompts; recommended "
        f"{rec['tag']}; avatar pack of {len(pack)} images; see {layout.REPORT}",
        force=True,
    )


def _encode(picture) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()
