"""The world sumie-tiny draws: one flat shape on a flat background, 64x64 RGB, with its caption.

Deterministic for a seed. The colour/shape pairs in HELD_OUT never appear in training; they measure
whether a model composes colour and shape it learned separately.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLORS = {"red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (40, 170, 70),
          "blue": (40, 90, 220), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (25, 25, 25)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 16, "large": 32}  # bounding-box side, pixels
POSITIONS = {"center": (32, 32), "top left": (16, 16), "top right": (48, 16), "bottom left": (16, 48),
             "bottom right": (48, 48)}
NEW_SHAPES = ("diamond",)  # never in sumie-tiny's training: the concept `lora_demo` teaches it
HELD_OUT = {("purple", "triangle"), ("orange", "square"), ("white", "circle")}


@dataclass(frozen=True)
class Scene:
    background: str
    color: str
    shape: str
    size: str
    position: str

    def caption(self) -> str:
        """The full caption, the form that must always work."""
        where = "in the center" if self.position == "center" else f"in the {self.position} corner"
        return f"a {self.size} {self.color} {self.shape} {where} on a {self.background} background"

    def render(self) -> np.ndarray:
        """(64, 64, 3) uint8 image, drawn without anti-aliasing so that colours stay exact."""
        image = Image.new("RGB", (SIZE, SIZE), COLORS[self.background])
        draw = ImageDraw.Draw(image)
        (cx, cy), r = POSITIONS[self.position], SIZES[self.size] / 2
        box = (cx - r, cy - r, cx + r - 1, cy + r - 1)
        fill = COLORS[self.color]
        if self.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif self.shape == "square":
            draw.rectangle(box, fill=fill)
        elif self.shape == "diamond":  # a square on its corner
            draw.polygon([(cx - 0.5, cy - r), (cx + r - 1, cy - 0.5), (cx - 0.5, cy + r - 1), (cx - r, cy - 0.5)],
                         fill=fill)
        else:  # pointing up
            draw.polygon([(cx - 0.5, cy - r), (cx - r, cy + r - 1), (cx + r - 1, cy + r - 1)], fill=fill)
        return np.asarray(image)


def training_caption(scene: Scene, rng: random.Random) -> str:
    """A caption for training: the full form most often, else size and/or position left out (the image
    then picked them at random), or a terse paraphrase."""
    form = rng.random()
    where = "in the center" if scene.position == "center" else f"in the {scene.position} corner"
    if form < 0.5:
        return scene.caption()
    if form < 0.65:
        return f"a {scene.color} {scene.shape} {where} on a {scene.background} background"
    if form < 0.8:
        return f"a {scene.size} {scene.color} {scene.shape} on a {scene.background} background"
    if form < 0.9:
        return f"a {scene.color} {scene.shape} on a {scene.background} background"
    return f"a {scene.color} {scene.shape}, {scene.background} background"


def all_scenes(*, held_out: bool = False) -> list[Scene]:
    """Every scene of the training split (held_out=False) or of the held-out pairs."""
    return [Scene(bg, c, sh, sz, pos) for bg in COLORS for c in COLORS if c != bg for sh in SHAPES
            for sz in SIZES for pos in POSITIONS if ((c, sh) in HELD_OUT) == held_out]


def sample(n: int, seed: int, *, held_out: bool = False) -> list[Scene]:
    """n scenes drawn uniformly (with replacement) from a split, reproducibly."""
    rng = random.Random(seed)
    scenes = all_scenes(held_out=held_out)
    return [rng.choice(scenes) for _ in range(n)]
