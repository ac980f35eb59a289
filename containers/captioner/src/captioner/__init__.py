"""Caption stage of the photo-to-LoRA pipeline (BLIP; docs/training.md, Captions)."""
