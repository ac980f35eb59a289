"""A tiny, randomly initialised CLIP saved like openai/clip-vit-base-patch32, so tests run the production loader.

Random weights say nothing about quality; the tests use it for the plumbing (shapes, every cell scored,
planted images flagged) and check the metric code itself on constructed embeddings. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from tiny_sd import _write_tokenizer, tiny_text_config


def save_tiny_clip(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(path)  # the letters-only CLIP BPE vocabulary the tiny SD pipeline uses
    tokenizer = CLIPTokenizer.from_pretrained(path)
    config = CLIPConfig(
        text_config=tiny_text_config(len(tokenizer)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    processor.save_pretrained(path)
    return path
