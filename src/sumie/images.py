"""Images out of the pipeline: grids, atomic PNG writes, and AUTOMATIC1111's `parameters` metadata.

The `parameters` text chunk (AUTOMATIC1111's format, read by most SD tools):

    a photograph of an astronaut riding a horse
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, ...

`Size` is width x height. The last line holds `key: value` pairs; values with commas are quoted.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from . import __version__
from .errors import InputError
from .schedulers import spec_for

NEGATIVE = "Negative prompt: "
# key: value pairs of the last line; a value is a JSON-quoted string or runs to the next comma
_PAIR = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def image_grid(images: list[Image.Image], rows: int, cols: int) -> Image.Image:
    """Arrange `rows * cols` equally sized images row by row into one image."""
    if len(images) != rows * cols:
        raise InputError(f"image_grid needs rows * cols = {rows * cols} images (got {len(images)})")
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, box=(i % cols * w, i // cols * h))
    return grid


def image_tensor(image: Image.Image | list, height: int | None = None, width: int | None = None,
                 multiple: int = 8) -> torch.Tensor:
    """PIL image(s) -> (B, 3, H, W) in [-1, 1], resized (Lanczos) to height x width, by default the first image's
    size rounded down to a multiple of `multiple` (as diffusers' VaeImageProcessor prepares an init image)."""
    images = image if isinstance(image, list) else [image]
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise InputError("image must be a PIL image or a list of them")
    w, h = images[0].size
    width, height = width or w - w % multiple, height or h - h % multiple
    if width < multiple or height < multiple:
        raise InputError(f"the init image is {w}x{h}; it must be at least {multiple}x{multiple} pixels")
    arrays = [np.asarray(im.convert("RGB").resize((width, height), Image.LANCZOS), dtype=np.float32) / 255
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2 - 1


MAX_PIXELS = 64 * 1024 * 1024  # an init image or mask larger than this is refused before its pixels are read


def load_image(source: str | Path | bytes, what: str) -> Image.Image:
    """An image file or its bytes, loaded; InputError naming `what` when it is not a readable image or is larger
    than MAX_PIXELS (read from the header first, so a decompression bomb costs nothing)."""
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if im.width * im.height > MAX_PIXELS:
            raise InputError(f"{what} is {im.width}x{im.height}, over the {MAX_PIXELS} pixel limit")
        im.load()
        return im
    except FileNotFoundError:
        raise InputError(f"{what}: no such file") from None
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise InputError(f"{what} is not a readable image ({e})") from None


def mask_tensor(mask: Image.Image | list, height: int, width: int) -> torch.Tensor:
    """PIL mask(s) -> (B, 1, H, W) of 0 (keep) and 1 (repaint): grey levels resized (Lanczos) to height x width and
    cut at one half, as diffusers' mask processor does."""
    masks = mask if isinstance(mask, list) else [mask]
    if not masks or not all(isinstance(m, Image.Image) for m in masks):
        raise InputError("mask_image must be a PIL image or a list of them")
    arrays = [np.asarray(m.convert("L").resize((width, height), Image.LANCZOS), dtype=np.float32) / 255 for m in masks]
    return (torch.from_numpy(np.stack(arrays))[:, None] >= 0.5).float()


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def format_parameters(prompt: str, negative_prompt: str = "", **fields) -> str:
    """The A1111 `parameters` text. `fields` in order, e.g. Steps=20, Sampler="Euler a", CFG_scale=7.5;
    underscores in keys become spaces."""
    lines = [prompt]
    if negative_prompt:
        lines.append(NEGATIVE + negative_prompt)
    lines.append(", ".join(f"{k.replace('_', ' ')}: {_quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def infotext(prompt: str, negative_prompt: str, *, steps: int, sampler_id: str, karras: bool, cfg_scale: float,
             seed: int, width: int, height: int, model_hash: str, model_name: str, clip_skip: int = 1,
             emphasis: str = "original", prompt_syntax: str = "a1111", lora_hashes: str | None = None,
             extra: dict | None = None) -> str:
    """The A1111 `parameters` text of one generated image, as the CLI and the server write it. `clip_skip` is
    A1111's count (1: the last layer) and, like a non-default emphasis, is written only when it changes the
    image, as A1111 does; "Prompt syntax: plain" marks a prompt read as plain text (sumie's key). `extra`: more
    fields after the model's (img2img's, see `img2img.Img2Img.fields`)."""
    return format_parameters(prompt, negative_prompt, Steps=steps, Sampler=spec_for(sampler_id).a1111,
                             Schedule_type="Karras" if karras else "Automatic", CFG_scale=cfg_scale, Seed=seed,
                             Size=f"{width}x{height}", Model_hash=model_hash, Model=model_name, **(extra or {}),
                             Clip_skip=clip_skip if clip_skip > 1 else None,
                             Emphasis="None" if emphasis == "none" else None,
                             Prompt_syntax="plain" if prompt_syntax == "plain" else None,
                             Lora_hashes=lora_hashes, Version=f"sumie {__version__}")


def parse_parameters(text: str) -> dict[str, str]:
    """The A1111 `parameters` text -> {"Prompt", "Negative prompt", "Steps", "Sampler", ...} (values as text)."""
    lines = text.strip("\n").split("\n")
    found = _PAIR.findall(lines[-1])
    pairs = {k: json.loads(v) if v.startswith('"') else v.strip() for k, v in found} if len(found) >= 3 else {}
    body = lines[:-1] if pairs else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith(NEGATIVE):
            in_negative, line = True, line[len(NEGATIVE):]
        (negative if in_negative else prompt).append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **pairs}


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """`image` as a PNG file's bytes, with `parameters` (A1111's text) as its `parameters` chunk."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | Path, parameters: str | None = None, *, overwrite: bool = False) -> Path:
    """Write a PNG atomically (a temp file in the same folder, then a rename or link), with the `parameters`
    chunk. Without `overwrite`, an existing file raises FileExistsError and is left untouched."""
    path = Path(path)
    data = png_bytes(image, parameters)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` exists: never overwrites
    finally:
        if os.path.exists(tmp) and (not overwrite or os.path.exists(path)):
            os.unlink(tmp)
    return path


def save_png_new(image: Image.Image, names: Iterable[Path], parameters: str | None = None) -> Path:
    """Save under the first of `names` that is free (atomically, never overwriting); -> the path written."""
    for path in names:
        try:
            return save_png(image, path, parameters)
        except FileExistsError:
            continue
    raise InputError("no free file name left")


def read_parameters(path: str | Path) -> str:
    """The `parameters` text stored in a PNG (InputError when the file has none or is not an image)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a PNG file")
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file")
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise InputError(f"{path} is not a readable image ({e})") from None
    if not text:
        raise InputError(f"{path} has no generation parameters (no 'parameters' PNG text chunk)")
    return text
