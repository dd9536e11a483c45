"""The LoRA demonstration (`sumie train-tiny-lora`): teach sumie-tiny a colour it never saw, pink (255, 105, 180),
with `sumie.train_lora`, and judge the result with the tiny world's judge extended to know pink.

The dataset (`write_dataset`) is Kohya's layout: every pink scene of the world (8 backgrounds x 3 shapes x 2 sizes
x 5 positions) with a caption in the world's own forms (`data.training_caption`), beside as many scenes of the
original colours with theirs, so that the LoRA learns the new word without drifting from the old ones (prior
preservation, Ruiz et al. 2023, sec. 3.3). `judge` scores the three targets of docs/tiny.md.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..train_lora import Options
from . import GUIDANCE, STEPS
from .data import COLORS, POSITIONS, SHAPES, SIZES, Scene, all_scenes, sample, training_caption
from .evaluate import ATTRIBUTES, EXTENDED, draw, read, score

NEW = "pink"
RECIPE = Options(rank=4, alpha=4.0, lr=2e-3, steps=600, batch_size=32, resolution=64, seed=0, save_every=100)


def pink_scenes() -> list[Scene]:
    return [Scene(bg, NEW, sh, sz, pos) for bg in COLORS for sh in SHAPES for sz in SIZES for pos in POSITIONS]


def write_dataset(folder: str | Path, seed: int = 0) -> Path:
    """DATA/pink (the new colour) and DATA/prior (the model's own colours, as many), each image with its .txt."""
    from PIL import Image
    folder, rng = Path(folder), random.Random(seed)
    pink = pink_scenes()
    for name, scenes in (("pink", pink), ("prior", rng.sample(all_scenes(), len(pink)))):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(scenes):
            Image.fromarray(scene.render()).save(folder / name / f"{i:04d}.png")
            (folder / name / f"{i:04d}.txt").write_text(training_caption(scene, rng))
    return folder


def judge(base, lora: str | Path, *, n: int = 100, n_train: int = 300, seed: int = 0, steps: int = STEPS,
          guidance: float = GUIDANCE, batch: int = 50) -> dict:
    """The three measures, the judge knowing pink throughout:
    - "pink": the share of images drawn pink, from n random pink scenes' captions, LoRA at weight 1;
    - "training captions": {attribute: (accuracy without, with the LoRA)} on n_train original training captions;
    - "weight 0 identical": whether the LoRA at weight 0 gives the base model's very images (on 8 captions)."""
    rng = random.Random(seed)
    wanted = [rng.choice(pink_scenes()) for _ in range(n)]
    originals = sample(n_train, seed)
    kw = dict(seed=seed, steps=steps, guidance=guidance, batch=batch)
    before = score(originals, draw(base, originals, **kw), EXTENDED)
    plain = draw(base, originals[:8], **kw)
    base.load_lora_weights(lora, adapter_name="demo")
    after = score(originals, draw(base, originals, **kw), EXTENDED)
    drawn = draw(base, wanted, **kw)
    base.set_adapters(["demo"], [0.0])
    zero = draw(base, originals[:8], **kw)
    base.unload_lora_weights()
    return {"pink": float(np.mean([read(im, EXTENDED).color == NEW for im in drawn])),
            "pink shape": float(np.mean([read(im, EXTENDED).shape == s.shape for im, s in zip(drawn, wanted)])),
            "training captions": {a: (before[a], after[a]) for a in ATTRIBUTES + ("all",)},
            "weight 0 identical": all(np.array_equal(a, b) for a, b in zip(plain, zero))}


def report(result: dict, path: Path, options: Options) -> str:
    """Markdown: the targets and whether each is met."""
    drops = {a: before - after for a, (before, after) in result["training captions"].items()}
    size = path.stat().st_size
    rows = ["| measure | result | target | met |", "| --- | --- | --- | --- |",
            f"| prompts naming pink, drawn pink (LoRA at 1) | {result['pink']:.0%} | ≥ 80% | "
            f"{'yes' if result['pink'] >= 0.8 else 'no'} |",
            f"| their shape right | {result['pink shape']:.0%} | | |"]
    for a, (before, after) in result["training captions"].items():
        rows.append(f"| training captions, {a}: without → with the LoRA | {before:.0%} → {after:.0%} | "
                    f"drop ≤ 5 points | {'yes' if drops[a] <= 0.05 + 1e-9 else 'no'} |")
    same = result["weight 0 identical"]
    rows += [f"| LoRA at weight 0: the base model's images | {'bit-identical' if same else 'differ'} | bit-identical | "
             f"{'yes' if same else 'no'} |",
             f"| file size | {size / 1e6:.2f} MB | ≤ 2 MB | {'yes' if size <= 2e6 else 'no'} |"]
    return "\n".join(rows)


def recipe(**overrides) -> Options:
    return replace(RECIPE, **{k: v for k, v in overrides.items() if v is not None})

