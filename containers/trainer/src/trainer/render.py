"""The X/Y grid image (docs/training.md, Evaluation grid): checkpoints across, LoRA strengths down, labelled axes.

Pure PIL, so the layout is testable without a model.
"""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def font_size(cell_width: int) -> int:
    """Labels scale with the cell so a 512 px grid stays readable when viewed whole."""
    return max(12, cell_width // 24)


def margins(cell_width: int) -> tuple[int, int]:
    """(left, top) label margins in pixels: the grid is left + cols*width by top + rows*height."""
    size = font_size(cell_width)
    return 8 * size, 2 * size  # 8 font sizes fit "strength 1.00"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    """Shortens `text` with an ellipsis until it fits `max_width`."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def grid(cells: list[list[Image.Image]], col_labels: list[str], row_labels: list[str]) -> Image.Image:
    """cells[row][col], all the same size. Column labels go above, row labels to the left."""
    rows, cols = len(cells), len(cells[0])
    assert len(col_labels) == cols and len(row_labels) == rows and all(len(r) == cols for r in cells)
    w, h = cells[0][0].size
    left, top = margins(w)
    size = font_size(w)
    font = ImageFont.load_default(size=size)
    out = Image.new("RGB", (left + cols * w, top + rows * h), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for c, label in enumerate(col_labels):
        text = _fit(draw, label, font, w - size)
        x = left + c * w + (w - draw.textlength(text, font=font)) / 2
        draw.text((x, size // 2), text, fill=INK, font=font)
    for r, label in enumerate(row_labels):
        text = _fit(draw, label, font, left - size // 2)
        draw.text((size // 4, top + r * h + h // 2 - size // 2), text, fill=INK, font=font)
        for c, cell in enumerate(cells[r]):
            assert cell.size == (w, h), "every cell must have the same size"
            out.paste(cell.convert("RGB"), (left + c * w, top + r * h))
    return out
