"""The LoRA demonstration (`sumie train-tiny-lora`): teach sumie-tiny a shape it never saw, the diamond (a square
on its corner), with `sumie.train_lora`, and judge the result with the tiny world's judge extended to know it.

Not a colour: sumie-tiny's VAE, trained on 8 colours, decodes any other colour as one of them (pink comes back
purple), and a UNet LoRA cannot draw what the decoder cannot (docs/tiny.md). The dataset (`write_dataset`) is
Kohya's layout: every diamond scene of the world (8 colours x 7 backgrounds x 2 sizes x 5 positions) with a caption
in the world's own forms (`data.training_caption`), beside as many scenes of the original shapes with theirs, so
that the LoRA learns the new word without drifting from the old ones (prior preservation, Ruiz et al. 2023,
sec. 3.3). `judge` scores the targets of docs/tiny.md.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..train_lora import Options
from . import GUIDANCE, STEPS
from .data import COLORS, POSITIONS, SIZES, Scene, all_scenes, sample, training_caption
from .evaluate import ATTRIBUTES, EXTENDED, draw, read, score

NEW = "diamond"
RECIPE = Options(rank=8, alpha=8.0, lr=2e-3, steps=1800, batch_size=32, resolution=64, seed=0, targets="transformer",
                 text_encoder=True, save_every=100)


def new_scenes(size: str | None = None) -> list[Scene]:
    """Every diamond scene (of one size, if given)."""
    return [Scene(bg, c, NEW, sz, pos) for bg in COLORS for c in COLORS if c != bg for sz in SIZES
            for pos in POSITIONS if size in (None, sz)]


def write_dataset(folder: str | Path, seed: int = 0) -> Path:
    """DATA/diamond (the new shape) and DATA/prior (the model's own shapes, as many), each image with its .txt."""
    from PIL import Image
    folder, rng = Path(folder), random.Random(seed)
    new = new_scenes()
    for name, scenes in ((NEW, new), ("prior", rng.sample(all_scenes(), len(new)))):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(scenes):
            Image.fromarray(scene.render()).save(folder / name / f"{i:04d}.png")
            (folder / name / f"{i:04d}.txt").write_text(training_caption(scene, rng))
    return folder


def judge(base, lora: str | Path, *, n: int = 100, n_train: int = 300, seed: int = 0, steps: int = STEPS,
          guidance: float = GUIDANCE, batch: int = 50) -> dict:
    """The measures, the judge knowing the diamond throughout (`evaluate.EXTENDED`):
    - "large" / "small": the share of images drawn as a diamond, from n random diamond scenes' captions of that
      size, LoRA at weight 1; beside it, the share of those scenes' own images the judge still reads as diamonds
      after a trip through the VAE ("... through the VAE"), the most any UNet could reach;
    - "training captions": {attribute: (accuracy without, with the LoRA)} on n_train original training captions;
    - "weight 0 identical": whether the LoRA at weight 0 gives the base model's very images (on 8 captions)."""
    import torch
    rng = random.Random(seed)
    wanted = {size: [rng.choice(new_scenes(size)) for _ in range(n)] for size in SIZES}
    originals = sample(n_train, seed)
    kw = dict(seed=seed, steps=steps, guidance=guidance, batch=batch)
    is_new = lambda images: float(np.mean([read(im, EXTENDED).shape == NEW for im in images]))
    out = {}
    with torch.no_grad():
        for size, scenes in wanted.items():
            x = torch.from_numpy(np.stack([s.render() for s in scenes]).astype(np.float32)).permute(0, 3, 1, 2)
            y = base.vae.decode(base.vae.encode(x / 127.5 - 1).mean)
            out[f"{size} through the VAE"] = is_new(((y.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round()
                                                    .byte().numpy())
    before = score(originals, draw(base, originals, **kw), EXTENDED)
    plain = draw(base, originals[:8], **kw)
    base.load_lora_weights(lora, adapter_name="demo")
    after = score(originals, draw(base, originals, **kw), EXTENDED)
    for size, scenes in wanted.items():
        out[size] = is_new(draw(base, scenes, **kw))
    base.set_adapters(["demo"], [0.0])
    zero = draw(base, originals[:8], **kw)
    base.unload_lora_weights()
    return {**out, "training captions": {a: (before[a], after[a]) for a in ATTRIBUTES + ("all",)},
            "weight 0 identical": all(np.array_equal(a, b) for a, b in zip(plain, zero))}


def report(result: dict, path: Path, options: Options) -> str:
    """Markdown: the targets and whether each is met."""
    drops = {a: before - after for a, (before, after) in result["training captions"].items()}
    size = path.stat().st_size
    rows = ["| measure | result | target | met |", "| --- | --- | --- | --- |",
            f"| prompts naming a large diamond, drawn as one (LoRA at 1) | {result['large']:.0%} | ≥ 80% | "
            f"{'yes' if result['large'] >= 0.8 else 'no'} |",
            f"| the same scenes' own images, through the VAE | {result['large through the VAE']:.0%} | | |",
            f"| prompts naming a small diamond, drawn as one | {result['small']:.0%} | | |",
            f"| the same scenes' own images, through the VAE | {result['small through the VAE']:.0%} | | |"]
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

