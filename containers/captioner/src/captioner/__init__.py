"""Caption stage of the photo-to-LoRA pipeline (BLIP, recipe.md section 3)."""
