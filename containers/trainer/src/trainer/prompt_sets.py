"""The avatar pack's prompts: a default set per job kind, or spec.evaluation.packPrompts when the job gives them.

The character set is the generalisation test of docs/training.md (steampunk military uniform, jester in a
Swiss town, ramen shop, astronaut suit) plus artistic styles (painting, watercolour, anime, cyberpunk):
what a customer of an avatar product expects to see. Object and style sets ask the same of their kind:
the object in new places and media, the style applied to new subjects.
"""

from __future__ import annotations

import re

CHARACTER = [
    "a portrait of {token}, a {classWord} in a steampunk military uniform, brass goggles, detailed",
    "{token}, a {classWord} dressed as a jester in a Swiss town, mountains behind, colourful",
    "{token}, a {classWord} eating in a ramen shop at night, warm light, photo",
    "a portrait of {token}, a {classWord} in an astronaut suit, helmet off, space station",
    "an oil painting of {token}, a {classWord}, classical portrait, brush strokes",
    "a watercolour painting of {token}, a {classWord}, soft washes, paper texture",
    "{token}, a {classWord} as an anime character, cel shading, clean line art",
    "{token}, a {classWord} in a cyberpunk city at night, neon lights, rain",
]
OBJECT = [
    "a photo of {token}, a {classWord}, on a wooden table, soft daylight",
    "{token}, a {classWord}, in a sunny garden, shallow depth of field",
    "{token}, a {classWord}, on a shelf in a busy shop, photo",
    "{token}, a {classWord}, floating in outer space, stars behind",
    "an oil painting of {token}, a {classWord}, still life",
    "a watercolour painting of {token}, a {classWord}, soft washes",
    "{token}, a {classWord}, in an anime scene, cel shading",
    "{token}, a {classWord}, on a neon-lit cyberpunk street at night, rain",
]
STYLE = [
    "a portrait of a woman, in the style of {token} {classWord}",
    "a mountain village at sunrise, in the style of {token} {classWord}",
    "a bowl of ramen on a counter, in the style of {token} {classWord}",
    "an astronaut floating in space, in the style of {token} {classWord}",
    "a cat sleeping on a windowsill, in the style of {token} {classWord}",
    "a busy city street in the rain, in the style of {token} {classWord}",
    "a sailing ship on a stormy sea, in the style of {token} {classWord}",
    "a bunch of flowers in a vase, in the style of {token} {classWord}",
]
DEFAULTS = {"character": CHARACTER, "object": OBJECT, "style": STYLE}
# Seeds per pack prompt (seed, seed+1, ...) when spec.evaluation.packSeeds is absent.
DEFAULT_PACK_SEEDS = 2


def fill(template: str, spec: dict) -> str:
    """Substitutes {token} and {classWord}; drops an A1111 <lora:...> tag (strength is applied by the pipeline)."""
    text = template.replace("{token}", spec["token"]).replace("{classWord}", spec["classWord"])
    return re.sub(r"\s*,?\s*<lora:[^>]*>", "", text).strip()


def pack_prompts(spec: dict) -> list[str]:
    templates = spec["evaluation"].get("packPrompts") or DEFAULTS[spec["kind"]]
    return [fill(t, spec) for t in templates]


def pack_seeds(spec: dict) -> list[int]:
    ev = spec["evaluation"]
    return [ev["seed"] + k for k in range(ev.get("packSeeds") or DEFAULT_PACK_SEEDS)]
