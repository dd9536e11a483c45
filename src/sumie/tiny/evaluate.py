"""Judge images of the tiny world by plain image analysis: background colour, shape colour, shape type,
position and size, each read back from the pixels and compared with the caption's scene."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import COLORS, NEW_SHAPES, POSITIONS, SHAPES, SIZES, Scene

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)  # (8, 3)
ATTRIBUTES = ("background", "color", "shape", "position", "size")
EXTENDED = SHAPES + NEW_SHAPES  # the shapes of a judge that knows the LoRA demonstration's too


def nearest_color(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


def _shape(box: np.ndarray, shapes: tuple[str, ...]) -> str:
    """The shape of a (h, w) bool mask cropped to its bounding box. By how much of the box it fills: square ~1,
    circle ~pi/4, triangle ~1/2. A judge that knows the diamond reads widths instead, at a quarter and three
    quarters of the height, as a share of the widest row: triangle (pointing up) ~1/4 and ~3/4, diamond ~1/2 and
    ~1/2, circle ~0.87 and ~0.87, square 1 and 1."""
    fill = box.mean()
    if "diamond" not in shapes:
        return "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    widths = box.sum(1) / box.sum(1).max()
    upper, lower = widths[len(widths) // 4], widths[(3 * len(widths)) // 4]
    if lower - upper > 0.25:
        return "triangle"
    return "square" if fill > 0.9 else "circle" if (upper + lower) / 2 > 0.7 else "diamond"


@dataclass(frozen=True)
class Reading:
    background: str
    color: str | None
    shape: str | None
    size: str | None
    position: str | None


def read(image: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> Reading:
    """(64, 64, 3) uint8 -> the scene as the pixels show it (None where no shape is found), its shape one of
    `shapes` (EXTENDED: the diamond too)."""
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
    shape = _shape(mask[top:bottom + 1, left:right + 1], shapes)
    size = "small" if max(h, w) < (SIZES["small"] + SIZES["large"]) / 2 else "large"
    centre = ((left + right + 1) / 2, (top + bottom + 1) / 2)
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - centre[0]) ** 2 + (POSITIONS[p][1] - centre[1]) ** 2)
    return Reading(background, color, shape, size, position)


def score(scenes: list[Scene], images: list[np.ndarray], shapes: tuple[str, ...] = SHAPES) -> dict[str, float]:
    """Fraction of images right on each attribute, and on all of them at once."""
    hits = {a: 0 for a in ATTRIBUTES + ("all",)}
    for scene, image in zip(scenes, images):
        got = read(image, shapes)
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
        images = draw(pipe, scenes, seed=seed, steps=steps, guidance=guidance, batch=batch, progress=progress)
        results[split], examples[split] = score(scenes, images), list(zip(scenes, images))
    return results, examples


def draw(pipe, scenes: list[Scene], *, seed: int, steps: int, guidance: float, batch: int = 50,
         progress=None) -> list[np.ndarray]:
    """One (64, 64, 3) uint8 image per scene, from its full caption; image i from seed + i."""
    images = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        out = pipe([s.caption() for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   seed=seed + i, output_type="np").images
        images += [(im * 255).round().astype(np.uint8) for im in out]
        if progress:
            progress(len(chunk))
    return images


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


EDITS = {  # name: (the init scene, the prompt, whether the shape is masked, strength, the colour and shape wanted)
    "img2img: red circle -> blue": (("white", "red", "circle", "large", "center"),
                                    "a large blue circle in the center on a white background", False, 0.8,
                                    ("blue", "circle")),
    "img2img, control: the init's own prompt": (("white", "red", "circle", "large", "center"),
                                                "a large red circle in the center on a white background", False, 0.8,
                                                ("blue", "circle")),
    "inpaint: red circle -> green square": (("white", "red", "circle", "large", "top left"),
                                            "a large green square in the top left corner on a white background",
                                            True, 1.0, ("green", "square")),
    "inpaint: yellow triangle -> purple circle": (("black", "yellow", "triangle", "large", "bottom right"),
                                                  "a large purple circle in the bottom right corner on a black "
                                                  "background", True, 1.0, ("purple", "circle")),
}


def evaluate_edits(pipe, *, n: int = 50, seed: int = 0, steps: int, guidance: float) -> str:
    """img2img and inpainting of fixed scenes, judged over seeds seed .. seed + n - 1: a markdown table of how often
    the image shows the wanted colour and shape and the init's background, and (inpainting) the largest change, in
    levels of 255, to the pixels beyond the reach of the blurred mask. Runs A1111's path (sumie.img2img) with a mask
    grown 4 pixels around the shape, blur 2, masked content "original". The control keeps the init's own prompt, so
    it must not turn blue."""
    from PIL import Image, ImageFilter

    from ..img2img import Img2Img, run
    from .data import POSITIONS, SIZES, Scene
    rows = ["| edit | strength | wanted colour | wanted shape | background kept | max change outside the mask |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, (fields, prompt, masked, strength, (colour, shape)) in EDITS.items():
        scene = Scene(*fields)
        init, mask = Image.fromarray(scene.render()), None
        if masked:
            (cx, cy), r = POSITIONS[scene.position], SIZES[scene.size] // 2 + 4
            mask = Image.new("L", init.size)
            mask.paste(255, (cx - r, cy - r, cx + r, cy + r))
        job = Img2Img(strength=strength, mask=mask, mask_blur_x=2, mask_blur_y=2, inpainting_fill=1)
        images = [np.asarray(im) for im in run(pipe, [init], job, width=64, height=64, steps=steps,
                                                  prompt=[prompt] * n, guidance_scale=guidance, seed=seed)]
        readings = [read(im) for im in images]
        outside = "-"
        if mask is not None:  # beyond the blur's reach (kernel radius 5) the overlay keeps the init image
            far = np.asarray(mask.filter(ImageFilter.MaxFilter(11))) == 0
            outside = str(max(int(np.abs(im.astype(int) - scene.render().astype(int))[far].max()) for im in images))
        rows.append(f"| {name} | {strength} | {colour}: {np.mean([g.color == colour for g in readings]):.0%} | "
                    f"{shape}: {np.mean([g.shape == shape for g in readings]):.0%} | "
                    f"{np.mean([g.background == scene.background for g in readings]):.0%} | {outside} |")
    return "\n".join(rows)
