"""Quality scores for rendered images: prompt adherence, likeness to the training photos, broken outputs.

One model for all of them: OpenAI CLIP ViT-B/32 (openai/clip-vit-base-patch32, MIT licence), baked into
the trainer image at a pinned revision. No face-recognition model with a licence that allows commercial
use was found (InsightFace/ArcFace weights are non-commercial; FaceNet's VGGFace2 weights inherit the
dataset's research-only terms), so likeness is a documented proxy: CLIP image embeddings of the same
central crop of render and photo, where a portrait's face sits (characters), or of the whole image
(objects, styles). The metric functions take plain arrays, so they are testable on constructed embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from avatar_job import StageError

CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_LICENCE = "MIT"
DEFAULT_CLIP_DIR = "/opt/models/clip-vit-base-patch32"

# Broken-output thresholds, in 0-255 units over every pixel and channel.
BLACK_MEAN = 10.0  # a mean this dark is a black (failed or NSFW-filtered) render
UNIFORM_STD = 4.0  # a spread this small is a blank or near-uniform image of any colour
# Near-copy thresholds: the render reproduces one training photo rather than the subject.
# Both must hold for one photo: the same content (CLIP) and the same layout (pixels). Either alone is
# common in a good LoRA: every render of the subject resembles the photos, and portraits share a layout.
NEAR_COPY_CLIP = 0.95  # CLIP image cosine (different photos of one person score lower)
NEAR_COPY_PIXELS = 0.85  # correlation of 32x32 greyscale thumbnails of the central squares
SUBJECT_CROP = 0.6  # characters: the central square of this fraction of the shorter side

DEFINITIONS = {
    "adherence": (
        f"prompt adherence, the cosine similarity between the {CLIP_MODEL} ({CLIP_LICENCE} licence) embeddings of the "
        "image and of its prompt (A1111 tag removed; CLIP reads the first 77 tokens). Higher means the prompt shows "
        "(does 'red hair' appear). Typical values are 0.2-0.35; compare cells, not absolute numbers."
    ),
    "likeness": (
        f"mean cosine similarity between the {CLIP_MODEL} image embedding of the image and those of the "
        f"training photos. Characters: the central square of {SUBJECT_CROP:.0%} of the shorter side of both (where a portrait's "
        "face sits; a proxy, as no face-recognition model with a licence that allows commercial use was found); objects "
        "and styles: the whole images. Higher means closer to the subject."
    ),
    "maxTrainingSimilarity": (
        "the highest of the same cosine similarities to any one training photo, whole images; "
        "one of the two near-copy signals (see broken)."
    ),
    "broken": (
        "why the image is unusable, empty when it is fine: 'nan' the render had NaN/inf pixels (shown black); "
        f"'black' mean brightness under {BLACK_MEAN:g}/255; 'uniform' pixel standard deviation under {UNIFORM_STD:g}/255 "
        f"(blank or near-uniform); 'nearCopy' it reproduces a training photo (overfitting): with one photo, both CLIP image cosine >= "
        f"{NEAR_COPY_CLIP} and 32x32 greyscale thumbnail correlation >= {NEAR_COPY_PIXELS} (same content and same layout)."
    ),
}


# ---- metric code on plain arrays ----
def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity matrix of a (N, D) and b (M, D): (N, M)."""
    return normalize(a) @ normalize(b).T


def adherence(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per image: cosine to its own prompt (row i of each)."""
    return np.sum(normalize(image_emb) * normalize(text_emb), axis=-1)


def likeness(image_emb: np.ndarray, photo_emb: np.ndarray) -> np.ndarray:
    """Per image: mean cosine to every training photo."""
    return cosine(image_emb, photo_emb).mean(axis=1)


def broken_pixels(pixels: np.ndarray) -> list[str]:
    """'black' and/or 'uniform' for a uint8 HxWx3 image."""
    p = pixels.astype(np.float64)
    out = []
    if p.mean() < BLACK_MEAN:
        out.append("black")
    if p.std() < UNIFORM_STD:
        out.append("uniform")
    return out


def thumbnail(image: Image.Image, size: int = 32) -> np.ndarray:
    """Greyscale size x size thumbnail of the central square, zero mean and unit norm (for correlation)."""
    t = np.asarray(center_square(image, 1.0).convert("L").resize((size, size), Image.BILINEAR), dtype=np.float64).ravel()
    t = t - t.mean()
    return t / max(np.linalg.norm(t), 1e-12)


def center_square(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    side = max(1, round(min(w, h) * fraction))
    x, y = (w - side) // 2, (h - side) // 2
    return image.crop((x, y, x + side, y + side))


def near_copy(clip: np.ndarray, pixel_corr: np.ndarray) -> bool:
    """clip, pixel_corr: one image's similarities to each training photo. True when one photo passes both."""
    return bool(np.any((np.asarray(clip) >= NEAR_COPY_CLIP) & (np.asarray(pixel_corr) >= NEAR_COPY_PIXELS)))


# ---- the model ----
@dataclass
class Photos:
    """The training photos as the scorer compares against them."""

    whole: np.ndarray  # (N, D) CLIP embeddings of the whole photos
    subject: np.ndarray  # (N, D) of the likeness crop (the whole photo for objects and styles)
    thumbs: np.ndarray  # (N, 1024) normalized greyscale thumbnails


class Scorer:
    """CLIP image and text embeddings, and every score of one image."""

    def __init__(self, model_dir: str | None = None, device: str | None = None):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.model_dir = model_dir or os.environ.get("AVATAR_CLIP_MODEL_DIR") or DEFAULT_CLIP_DIR
        if not (Path(self.model_dir) / "config.json").is_file():
            raise StageError(
                "CLIP_MODEL_MISSING",
                f"no CLIP model at {self.model_dir}; the trainer image bakes {CLIP_MODEL} in, set AVATAR_CLIP_MODEL_DIR",
                "AVATAR_CLIP_MODEL_DIR",
            )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = CLIPModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(self.model_dir, local_files_only=True)

    def images(self, images: list[Image.Image], batch: int = 32) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(images), batch):
            inputs = self.processor(images=[im.convert("RGB") for im in images[i : i + batch]], return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out.append(self.model.get_image_features(**inputs).float().cpu().numpy())
        return normalize(np.concatenate(out))

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return normalize(self.model.get_text_features(**inputs).float().cpu().numpy())

    def photos(self, images: list[Image.Image], kind: str) -> Photos:
        whole = self.images(images)
        subject = self.images([center_square(im, SUBJECT_CROP) for im in images]) if kind == "character" else whole
        return Photos(whole, subject, np.stack([thumbnail(im) for im in images]))

    def score(
        self, pixels_list: list[np.ndarray], prompts: list[str], photos: Photos, kind: str, nan: list[bool] | None = None
    ) -> list[dict[str, Any]]:
        """Scores of each image against its prompt (same index) and the training photos."""
        images = [Image.fromarray(p) for p in pixels_list]
        whole = self.images(images)
        subject = self.images([center_square(im, SUBJECT_CROP) for im in images]) if kind == "character" else whole
        adh = adherence(whole, self.texts(prompts))
        like = likeness(subject, photos.subject)
        clip = cosine(whole, photos.whole)
        pix = np.stack([thumbnail(im) for im in images]) @ photos.thumbs.T
        out = []
        for i, pixels in enumerate(pixels_list):
            broken = (["nan"] if nan and nan[i] else []) + broken_pixels(pixels)
            if near_copy(clip[i], pix[i]):
                broken.append("nearCopy")
            out.append(
                {
                    "adherence": round(float(adh[i]), 4),
                    "likeness": round(float(like[i]), 4),
                    "maxTrainingSimilarity": round(float(clip[i].max()), 4),
                    "broken": broken,
                }
            )
        return out
