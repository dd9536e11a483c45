"""Judge images of the tiny world by plain image analysis: background colour, shape colour, shape type,
position and size, each read back from the pixels and compared with the caption's scene."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import COLORS, POSITIONS, SIZES, Scene

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)  # (8, 3)
ATTRIBUTES = ("background", "color", "shape", "position", "size")


def nearest_color(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


@dataclass(frozen=True)
class Reading:
    background: str
    color: str | None
    shape: str | None
    size: str | None
    position: str | None


def read(image: np.ndarray) -> Reading:
    """(64, 64, 3) uint8 -> the scene as the pixels show it (None where no shape is found)."""
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (252, 3)
    bg_rgb = np.median(border, axis=0)
    background = nearest_color(bg_rgb)
    mask = np.sqrt(((img - bg_rgb) ** 2).sum(-1)) > 60  # (64, 64): pixels clearly not background
    if mask.sum() < 20:
        return Reading(background, None, None, None, None)
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = bottom - top + 1, right - left + 1
    color = nearest_color(np.median(img[mask], axis=0))
    fill = mask[top:bottom + 1, left:right + 1].mean()  # square ~1, circle ~pi/4, triangle ~1/2
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    size = "small" if max(h, w) < (SIZES["small"] + SIZES["large"]) / 2 else "large"
    centre = ((left + right + 1) / 2, (top + bottom + 1) / 2)
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - centre[0]) ** 2 + (POSITIONS[p][1] - centre[1]) ** 2)
    return Reading(background, color, shape, size, position)


def score(scenes: list[Scene], images: list[np.ndarray]) -> dict[str, float]:
    """Fraction of images right on each attribute, and on all of them at once."""
    hits = {a: 0 for a in ATTRIBUTES + ("all",)}
    for scene, image in zip(scenes, images):
        got = read(image)
        right = [getattr(got, a) == getattr(scene, a) for a in ATTRIBUTES]
        for a, ok in zip(ATTRIBUTES, right):
            hits[a] += ok
        hits["all"] += all(right)
    return {a: n / len(scenes) for a, n in hits.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per split."""
    head = "| split | " + " | ".join(ATTRIBUTES + ("all",)) + " |\n|" + " --- |" * (len(ATTRIBUTES) + 2)
    rows = [f"| {split} | " + " | ".join(f"{r[a]:.0%}" for a in ATTRIBUTES + ("all",)) + " |"
            for split, r in results.items()]
    return "\n".join([head] + rows)
