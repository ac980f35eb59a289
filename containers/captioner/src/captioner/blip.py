"""BLIP captioning through transformers, with the beam search settings of docs/training.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

# Baked into the image at build time (Dockerfile); tests point this at a tiny saved model.
DEFAULT_MODEL_DIR = "/opt/models/blip-image-captioning-large"


def model_dir() -> Path:
    return Path(os.environ.get("AVATAR_BLIP_MODEL_DIR") or DEFAULT_MODEL_DIR)


@dataclass
class Settings:
    num_beams: int
    min_length: int
    max_length: int
    batch_size: int = 8


class Blip:
    def __init__(self, path: Path, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp16 halves memory and time on GPU; CPUs lack fast fp16 kernels.
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.processor = BlipProcessor.from_pretrained(path, local_files_only=True)
        self.model = BlipForConditionalGeneration.from_pretrained(path, torch_dtype=self.dtype, local_files_only=True)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def generate_ids(self, images: list[Image.Image], s: Settings) -> torch.Tensor:
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        return self.model.generate(
            pixel_values=pixel_values,
            num_beams=s.num_beams,
            min_length=s.min_length,
            max_length=s.max_length,
            # Beam search with a length floor tends to loop; this keeps captions readable.
            repetition_penalty=1.2 if s.num_beams > 1 else 1.0,
        )

    def caption(self, images: list[Image.Image], s: Settings) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), s.batch_size):
            ids = self.generate_ids(images[i : i + s.batch_size], s)
            out += [" ".join(t.split()) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out
