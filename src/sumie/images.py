"""Image helpers: grids (and, later, A1111-style PNG metadata)."""

from __future__ import annotations

from PIL import Image

from .errors import InputError


def image_grid(images: list[Image.Image], rows: int, cols: int) -> Image.Image:
    """Arrange `rows * cols` equally sized images row by row into one image."""
    if len(images) != rows * cols:
        raise InputError(f"image_grid needs rows * cols = {rows * cols} images (got {len(images)})")
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, box=(i % cols * w, i // cols * h))
    return grid
