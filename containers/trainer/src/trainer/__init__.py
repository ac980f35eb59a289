"""Train and evaluate stages of the photo-to-LoRA pipeline (kohya sd-scripts; docs/training.md, docs/kohya.md)."""
