"""The evaluate stage: the X/Y grid of docs/training.md, every checkpoint at every LoRA strength, same seed.

Reads normalize/plan.json and the checkpoints under train/, named from the plan (the evaluate role
cannot list the bucket). Writes only under evaluate/:
- grid.png (grid-<i>.png per prompt when spec.evaluation has several prompts): columns are the
  checkpoints in epoch order with the final one last, rows the strengths in spec order;
- base.png (base-<i>.png): the base model alone at the same prompt and seed, the reference below;
- pack/<outputName>-e<epoch>-s<strength>.png per cell (with -p<i> when there are several prompts);
- scores.json: every cell with its checkpoint, strength, prompt, seed, image and meanAbsDiffFromBase.

The base pipeline is loaded once; each checkpoint is loaded as a PEFT adapter (diffusers converts
kohya's lora_unet_/lora_te_ keys), rendered at every strength, then unloaded.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from avatar_job import Job, StageError, Status, now
from .render import grid
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
METRIC = ("meanAbsDiffFromBase: the mean absolute difference, over every pixel and RGB channel in 0-255 units, "
          "between the cell's image and the base model's image (no LoRA) for the same prompt, seed and settings. "
          "It measures how strongly the LoRA changes the render, not quality or likeness: 0 means no effect, and it "
          "normally rises with strength and with training epochs. Judge likeness and overfitting from the grid.")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    epoch: int
    final: bool

    @property
    def rel(self) -> str:
        return f"train/{self.name}"

    @property
    def label(self) -> str:
        return f"{self.name.removesuffix('.safetensors')} (e{self.epoch})"


def checkpoints(plan: dict) -> list[Checkpoint]:
    """kohya's names (docs/kohya.md, Outputs): one per epoch before the last, then the final file."""
    name, epochs = plan["outputName"], plan["plan"]["epochs"]
    return [Checkpoint(f"{name}-{e:06d}.safetensors", e, False) for e in range(1, epochs)] + \
        [Checkpoint(f"{name}.safetensors", epochs, True)]


def prompts(plan: dict) -> list[str]:
    spec = plan["spec"]
    out = []
    for p in spec["evaluation"]["prompts"]:
        p = p.replace("{token}", spec["token"]).replace("{classWord}", spec["classWord"])
        # An A1111 tag such as <lora:last:1.0> would only reach the text encoder as words: strength is applied here.
        out.append(re.sub(r"\s*,?\s*<lora:[^>]*>", "", p).strip())
    return out


def strength_label(s: float) -> str:
    return f"{s:.2f}"


def cell_rel(output_name: str, ckpt: Checkpoint, strength: float, prompt_index: int, n_prompts: int) -> str:
    suffix = f"-p{prompt_index}" if n_prompts > 1 else ""
    return f"evaluate/pack/{output_name}-e{ckpt.epoch}-s{strength_label(strength)}{suffix}.png"


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
            raise StageError("MISSING_CHECKPOINT", f"s3://{job.artifacts_bucket}/{job.key(c.rel)} is missing or unreadable ({code}); "
                             f"the train stage must publish all {len(ckpts)} checkpoints first", c.rel)
    return heads


def download_checkpoint(job: Job, ckpt: Checkpoint, head: dict, workdir: Path) -> Path:
    path = workdir / ckpt.name
    job.download(ckpt.rel, path)
    expected = head.get("Metadata", {}).get("sha256")  # set by the train stage when it published the file
    if expected and sha256(path) != expected:
        raise StageError("CHECKPOINT_CORRUPT", f"{ckpt.name} differs from the sha256 the train stage recorded; rerun training", ckpt.rel)
    read_header(path)  # a torn or non-safetensors file fails here with CHECKPOINT_INVALID
    return path


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
            raise StageError("SD_CONFIG_MISSING", f"no diffusers SD1.5 config at {config}; the trainer image bakes it in, set AVATAR_SD_CONFIG_DIR", "AVATAR_SD_CONFIG_DIR")
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

    def __call__(self, prompt: str):
        import numpy as np
        import torch

        ev = self.ev
        # A CPU generator gives the same starting noise on any device, so seeds mean the same everywhere.
        generator = torch.Generator("cpu").manual_seed(ev["seed"])
        with torch.inference_mode():
            out = self.pipe(prompt=prompt, negative_prompt=ev["negativePrompt"] or None, num_inference_steps=ev["steps"],
                            guidance_scale=ev["cfgScale"], width=ev["width"], height=ev["height"],
                            generator=generator, output_type="np")
        image = out.images[0]
        if not np.isfinite(image).all():
            raise StageError("RENDER_NAN", "the render contains NaN/inf (fp16 overflow or a broken checkpoint); check the train diary's loss", "spec.evaluation")
        return (image.clip(0, 1) * 255).round().astype(np.uint8)


def load_lora(pipe: Any, path: Path, ckpt: Checkpoint) -> None:
    try:
        # A directory plus weight_name: with HF_HUB_OFFLINE=1 diffusers refuses a bare file path.
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER, local_files_only=True)
    except Exception as e:  # diffusers raises ValueError/KeyError/RuntimeError for keys or shapes it cannot map
        raise StageError("CHECKPOINT_UNLOADABLE", f"diffusers could not load {ckpt.name} onto the base model ({type(e).__name__}: {e})", ckpt.rel)
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
    plan = job.load_plan()
    ev = plan["spec"]["evaluation"]
    name = plan["outputName"]
    if plan["spec"]["training"]["network"] == "loha":
        raise StageError("EVALUATE_UNSUPPORTED_NETWORK", "diffusers cannot load LoHa checkpoints; test them by hand in A1111 (docs/training.md, Reading the grid)",
                         "spec.training.network")
    ckpts = checkpoints(plan)
    texts = prompts(plan)
    strengths = ev["strengths"]
    heads = head_checkpoints(job, ckpts)

    import numpy as np

    status.progress(0.01, "loading the base model", force=True)
    pipe, source = load_pipeline(job)
    set_sampler(pipe, ev["sampler"])
    render = Renderer(pipe, ev)
    workdir = Path(os.environ.get("AVATAR_WORK_DIR") or tempfile.mkdtemp(prefix="avatar-evaluate-")) / "evaluate"
    workdir.mkdir(parents=True, exist_ok=True)

    total = len(texts) * (1 + len(ckpts) * len(strengths))
    done = 0

    def rendered(what: str, ckpt: Checkpoint | None = None) -> None:
        nonlocal done
        done += 1
        status.progress(0.05 + 0.9 * done / total, f"rendered {done}/{total} ({what})",
                        **({"epoch": ckpt.epoch, "epochs": plan["plan"]["epochs"]} if ckpt else {}))

    base = []
    for i, text in enumerate(texts):
        base.append(render(text))
        job.put_bytes(numbered("evaluate/base.png", i, len(texts)), _png(base[i]), "image/png")
        rendered("base model")

    cells: list[dict] = []
    images: dict[tuple[int, int, int], Any] = {}  # (prompt, strength row, checkpoint column) -> pixels
    for col, ckpt in enumerate(ckpts):
        path = download_checkpoint(job, ckpt, heads[ckpt.name], workdir)
        load_lora(pipe, path, ckpt)
        for row, strength in enumerate(strengths):
            set_strength(pipe, strength)
            for i, text in enumerate(texts):
                pixels = render(text)
                rel = cell_rel(name, ckpt, strength, i, len(texts))
                job.put_bytes(rel, _png(pixels), "image/png")
                images[i, row, col] = pixels
                diff = float(np.abs(pixels.astype(np.int16) - base[i].astype(np.int16)).mean())
                cells.append({"checkpoint": ckpt.name, "epoch": ckpt.epoch, "final": ckpt.final, "strength": strength,
                              "prompt": text, "promptIndex": i, "seed": ev["seed"], "image": rel,
                              "meanAbsDiffFromBase": round(diff, 4)})
                rendered(f"{ckpt.name} at strength {strength_label(strength)}", ckpt)
        pipe.unload_lora_weights()
        path.unlink()

    from PIL import Image

    grids = []
    for i, text in enumerate(texts):
        rel = numbered("evaluate/grid.png", i, len(texts))
        picture = grid([[Image.fromarray(images[i, r, c]) for c in range(len(ckpts))] for r in range(len(strengths))],
                       [c.label for c in ckpts], [f"strength {strength_label(s)}" for s in strengths])
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        job.put_bytes(rel, buf.getvalue(), "image/png")
        grids.append({"image": rel, "prompt": text, "promptIndex": i, "base": numbered("evaluate/base.png", i, len(texts)),
                      "columns": [c.name for c in ckpts], "rows": strengths})

    job.put_json("evaluate/scores.json", {
        "teamId": job.team_id, "jobId": job.job_id, "outputName": name, "createdAt": now(),
        "metrics": {"meanAbsDiffFromBase": METRIC},
        "settings": {**{k: ev[k] for k in ("negativePrompt", "steps", "cfgScale", "sampler", "seed", "width", "height")},
                     "strengthApplied": "diffusers/PEFT adapter weight on the U-Net and text-encoder LoRA layers (set_adapters)"},
        "baseModel": source, "versions": _versions(), "prompts": texts,
        "checkpoints": [{"name": c.name, "epoch": c.epoch, "final": c.final, "sha256": heads[c.name].get("Metadata", {}).get("sha256")} for c in ckpts],
        "grids": grids, "cells": cells,
    })
    status.progress(1.0, f"evaluated {len(ckpts)} checkpoints x {len(strengths)} strengths x {len(texts)} prompts; "
                    f"see evaluate/{'grid.png' if len(texts) == 1 else 'grid-<i>.png'}", force=True)
