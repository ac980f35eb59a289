"""A tiny randomly initialised BLIP saved like the real one, so tests run the production loader."""

from pathlib import Path

import torch
from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

WORDS = [
    "a",
    "man",
    "woman",
    "in",
    "an",
    "orange",
    "shirt",
    "sitting",
    "on",
    "rock",
    "desert",
    "with",
    "sunglasses",
    "kitchen",
    "black",
    "hair",
    "close",
    "up",
    "blurry",
    "background",
    "smiling",
    "the",
]


def save_tiny_blip(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
            encoder_hidden_size=32,
            bos_token_id=2,
            sep_token_id=3,
            pad_token_id=0,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
