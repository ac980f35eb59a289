"""Train and evaluate stages of the photo-to-LoRA pipeline (kohya sd-scripts, recipe.md sections 4-6)."""
