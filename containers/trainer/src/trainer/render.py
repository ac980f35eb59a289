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


OUTLINE = (255, 0, 160)  # magenta: unlike any skin or sky colour


def outline(picture: Image.Image, cell_size: tuple[int, int], row: int, col: int) -> Image.Image:
    """The grid with the cell at (row, col) framed, inside the cell so no neighbour is covered."""
    w, h = cell_size
    left, top = margins(w)
    out = picture.copy()
    width = max(3, w // 64)
    x, y = left + col * w, top + row * h
    ImageDraw.Draw(out).rectangle((x, y, x + w - 1, y + h - 1), outline=OUTLINE, width=width)
    return out


def contact_sheet(images: list[Image.Image], labels: list[str], columns: int = 4, thumb: int = 256) -> Image.Image:
    """Thumbnails in rows of `columns`, each with its label underneath (the avatar pack at a glance)."""
    assert images and len(images) == len(labels)
    size = font_size(thumb)
    font = ImageFont.load_default(size=size)
    label_h = 2 * size
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    out = Image.new("RGB", (cols * thumb, rows * (thumb + label_h)), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % cols) * thumb, (i // cols) * (thumb + label_h)
        im = image.convert("RGB").copy()
        im.thumbnail((thumb, thumb))
        out.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        text = _fit(draw, label, font, thumb - size // 2)
        draw.text((x + (thumb - draw.textlength(text, font=font)) / 2, y + thumb + size // 2), text, fill=INK, font=font)
    return out
