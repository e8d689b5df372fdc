"""Image grids that name their rows and columns, so a PNG says what it shows without the command that made it.

Cells are grey images in [0, 1]; each is scaled up by the smallest whole factor that makes it at least
`min_cell` pixels wide (nearest neighbour: the pixels stay the model's pixels), titles go above the columns and
at the left of the rows, in black on white, wrapped to the cell's width.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 12
MIN_CELL = 96  # pixels: wide enough for a two-line column title
GAP = 2  # pixels between cells (grey)
PAD = 4  # pixels around titles
GAP_VALUE = 0.5


def _font():
    return ImageFont.load_default(size=FONT_SIZE)


def _width(draw: ImageDraw.ImageDraw, text: str) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=_font())
    return right - left


def wrap(text: str, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a single long word stays whole);
    explicit newlines are kept."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and _width(draw, candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def labelled_grid(cells: list[list[np.ndarray | None]], row_labels: list[str], col_labels: list[str],
                  min_cell: int = MIN_CELL) -> np.ndarray:
    """Rows of cells (each (H, W) in [0, 1], None for an empty place) with their titles: a (h, w) float image in
    [0, 1]. Every cell has one shape; `row_labels` has one title per row, `col_labels` one per column."""
    shapes = {c.shape for row in cells for c in row if c is not None}
    if len(shapes) != 1:
        raise ValueError(f"grid cells have shapes {sorted(shapes)}; expected one shape.")
    n_cols = max(len(row) for row in cells)
    if len(row_labels) != len(cells) or len(col_labels) != n_cols:
        raise ValueError(f"{len(row_labels)} row and {len(col_labels)} column titles for a {len(cells)} x {n_cols} "
                         "grid; expected one title per row and per column.")
    h, w = shapes.pop()
    k = max(1, -(-min_cell // w))  # whole scale factor
    ch, cw = h * k, w * k
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    line_h = FONT_SIZE + 2
    col_lines = [wrap(t, cw - 2, draw) for t in col_labels]
    row_lines = [t.split("\n") for t in row_labels]
    top = PAD * 2 + line_h * max(len(lines) for lines in col_lines)
    left = PAD * 2 + max(_width(draw, line) for lines in row_lines for line in lines)
    height = top + len(cells) * (ch + GAP)
    width = left + n_cols * (cw + GAP)
    canvas = np.ones((height, width), np.float32)
    for r, row in enumerate(cells):
        y = top + r * (ch + GAP)
        canvas[y - GAP : y, left - GAP :] = GAP_VALUE
        for c, cell in enumerate(row):
            x = left + c * (cw + GAP)
            canvas[top - GAP :, x - GAP : x] = GAP_VALUE
            if cell is not None:
                canvas[y : y + ch, x : x + cw] = np.kron(np.clip(cell, 0, 1), np.ones((k, k), np.float32))
    image = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for c, lines in enumerate(col_lines):
        for i, line in enumerate(lines):
            x = left + c * (cw + GAP) + (cw - _width(draw, line)) // 2
            draw.text((x, PAD + i * line_h), line, fill=0, font=_font())
    for r, lines in enumerate(row_lines):
        y0 = top + r * (ch + GAP) + (ch - line_h * len(lines)) // 2
        for i, line in enumerate(lines):
            draw.text((PAD, y0 + i * line_h), line, fill=0, font=_font())
    return np.asarray(image, dtype=np.float32) / 255.0

