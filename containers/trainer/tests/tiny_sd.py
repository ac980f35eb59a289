"""A tiny, randomly initialised SD1.5-shaped pipeline and real kohya-format LoRA files for it.

The U-Net keeps SD1.5's block structure and module names (3 cross-attention down blocks, a plain
one, the mirror on the way up, 2 layers per block) with tiny channels, so kohya's `lora_unet_*`
names map onto it exactly as they do onto the real model. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

HIDDEN = 32  # text encoder width = the U-Net's cross-attention dim

# Lower-case letters and their word-final forms, enough for any prompt the tests write.
_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def _write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<|startoftext|>", "<|endoftext|>", "!", ",", "."] + _LETTERS + [c + "</w>" for c in _LETTERS] + [",</w>", ".</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "tokenizer_class": "CLIPTokenizer",
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )


def tiny_text_config(vocab_size: int) -> dict:
    """The tiny CLIP text model's settings: the SD pipeline's text encoder and the tiny CLIP scorer's text tower."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    """A StableDiffusionPipeline of these components with SD 1.5's scheduler and no safety checker."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(folder: Path) -> Path:
    """Saves a diffusers-format StableDiffusionPipeline folder (model_index.json and components)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(16, 16, 32, 32),
        norm_num_groups=8,
        cross_attention_dim=HIDDEN,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    # Five VAE blocks (SD1.5 has four) downsample 16x: 256 px, the contract's smallest size, becomes a
    # 16x16 latent and keeps CPU renders well under a second.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        block_out_channels=(8, 8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
    )
    _write_tokenizer(folder / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(len(tokenizer))))
    assemble_pipeline(vae, text_encoder, tokenizer, unet).save_pretrained(folder)
    return folder


UNET_TARGETS = re.compile(r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
TE_TARGETS = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def kohya_lora(
    pipeline_dir: Path, seed: int, rank: int = 4, alpha: float = 2.0, up_scale: float = 0.5, text_encoder: bool = True
) -> dict[str, torch.Tensor]:
    """A kohya networks.lora state dict for the tiny pipeline: lora_down/lora_up/alpha per module.

    kohya initialises lora_up to zero; a trained one is not, so random non-zero weights stand in for
    training and make every strength change the render.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    models = [("lora_unet_", UNet2DConditionModel.from_pretrained(pipeline_dir / "unet"), UNET_TARGETS)]
    if text_encoder:
        models.append(("lora_te_", CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder"), TE_TARGETS))
    for prefix, model, pattern in models:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name):
                key = prefix + name.replace(".", "_")
                out[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.5
                out[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * up_scale
                out[f"{key}.alpha"] = torch.tensor(float(alpha))
    return out
