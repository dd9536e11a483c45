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


def evaluate(pipe, *, n_train: int = 300, n_held_out: int = 100, seed: int = 0, steps: int, guidance: float,
             batch: int = 50, progress=None) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Generate from full captions of both splits with fixed seeds (image i of a split: seed + i) and score.
    Returns ({split: scores}, {split: [(scene, image)]})."""
    from .data import sample
    results, examples = {}, {}
    for split, n, held in (("training captions", n_train, False), ("held-out pairs", n_held_out, True)):
        scenes = sample(n, seed + held, held_out=held)
        images = []
        for i in range(0, n, batch):
            chunk = scenes[i:i + batch]
            out = pipe([s.caption() for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       seed=seed + i, output_type="np").images
            images += [(im * 255).round().astype(np.uint8) for im in out]
            if progress:
                progress(len(chunk))
        results[split], examples[split] = score(scenes, images), list(zip(scenes, images))
    return results, examples


def contact_sheet(examples: list, cols: int = 10):
    """A grid of (scene, image) pairs, each marked with a green (all right) or red (wrong) bar."""
    from PIL import Image, ImageDraw
    rows = -(-len(examples) // cols)
    sheet = Image.new("RGB", (cols * 68, rows * 72), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for i, (scene, image) in enumerate(examples):
        x, y = (i % cols) * 68 + 2, (i // cols) * 72 + 2
        sheet.paste(Image.fromarray(image), (x, y))
        got = read(image)
        ok = all(getattr(got, a) == getattr(scene, a) for a in ATTRIBUTES)
        draw.rectangle((x, y + 65, x + 63, y + 67), fill=(40, 200, 40) if ok else (220, 30, 30))
    return sheet
