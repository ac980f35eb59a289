"""Caption text rules (docs/training.md, Captions): the trigger prefix and caption hygiene."""

from __future__ import annotations

import re


def render_prefix(template: str, token: str, class_word: str) -> str:
    """`photo of {token}, ` -> `photo of anantn, ` ({classWord} is substituted too)."""
    return template.replace("{token}", token).replace("{classWord}", class_word)


def _core(prefix: str) -> str:
    # The part that must open the caption: "photo of anantn" without the joining comma/space.
    return prefix.strip().rstrip(",;:").strip().lower()


def ensure_prefix(caption: str, prefix: str) -> str:
    """Adds the prefix unless the caption already opens with it (so it is never doubled)."""
    caption = " ".join(caption.split())
    core = _core(prefix)
    if core and caption.lower().startswith(core):
        return caption
    return prefix + caption


_FILLER = r"(?:with|and|has|having)"


def remove_traits(caption: str, traits: list[str]) -> str:
    """Removes phrases for traits shared by every photo (they should bind to the token).

    Case-insensitive, whole words only; a joining "with"/"and" left dangling is removed with the
    trait, and leftover commas and spaces are tidied.
    """
    text = caption
    for trait in sorted(traits, key=len, reverse=True):
        words = r"\s+".join(re.escape(w) for w in trait.split())
        # "with black hair", "and black hair", or the bare trait.
        text = re.sub(rf"(?:\b{_FILLER}\s+)?\b{words}\b", " ", text, flags=re.IGNORECASE)
    # A filler now followed by punctuation or the end ("a man with , smiling"), or doubled.
    text = re.sub(rf"\b{_FILLER}\s*(?=[,.;]|$)", " ", text, flags=re.IGNORECASE)
    text = re.sub(rf"\b({_FILLER})\s+(?:{_FILLER})\b", r"\1", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+([,.;])", r"\1", text)
    text = re.sub(r"([,;])(?:\s*[,;])+", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" ,;").strip()
