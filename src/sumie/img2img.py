"""A1111's image to image around the pipelines: what the CLI and the server run.

A1111's options, as its documentation describes them:
- resize mode: how the init image (and the mask) meets width x height: 0 just resize (stretch), 1 crop and resize
  (fill the frame, centre cut), 2 resize and fill (fit inside, the empty bands stretched from the image's edges),
  3 latent upscale (here run as 0);
- mask blur: a Gaussian blur of the mask, sigma `mask_blur_x` across and `mask_blur_y` down (kernel 2 * int(2.5 *
  sigma + 0.5) + 1 taps, mirrored at the border);
- masked content: 0 fill (the hole filled with the colours around it, blurred), 1 original, 2 latent noise, 3 latent
  nothing;
- only masked: the mask's bounding box plus `padding` pixels, widened to the output's aspect ratio, is cut out,
  generated at width x height and pasted back;
- the result keeps the init image's pixels outside the mask: it is laid over the generated image through the
  (blurred) mask, doubled in strength when the whole image was generated;
- steps: int(min(strength, 0.999) * steps) of a `steps`-long schedule, or with `exact_steps` (A1111's "do exactly
  the amount of steps the slider specifies") `steps` of an int(steps / min(strength, 0.999))-long one.
The denoising is the diffusers pipelines' (see `pipeline`), so the numbers are diffusers', not A1111's k-diffusion
ones; a mask with nothing to repaint returns the init images without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InputError

RESIZE_MODES = ("just-resize", "crop", "fill", "latent")  # A1111's resize_mode 0-3
RESIZE_NAMES = {"Just resize": "just-resize", "Crop and resize": "crop", "Resize and fill": "fill",
                "Just resize (latent upscale)": "latent"}  # as A1111 writes them in the infotext
MASKED_CONTENT = ("fill", "original", "latent-noise", "latent-nothing")  # A1111's inpainting_fill 0-3


@dataclass(frozen=True)
class Img2Img:
    """One img2img / inpainting job's A1111 options (the init images themselves are passed beside)."""
    strength: float = 0.75
    resize_mode: int = 0
    mask: Image.Image | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 1
    only_masked: bool = False
    padding: int = 32
    invert_mask: bool = False
    exact_steps: bool = False

    def fields(self) -> dict:
        """The infotext fields A1111 writes for this job (keys with underscores for spaces)."""
        out = {"Denoising_strength": self.strength}
        if self.mask is not None:
            blur = self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None
            out.update(Mask_blur=blur, Mask_blur_x=None if blur is not None else self.mask_blur_x,
                       Mask_blur_y=None if blur is not None else self.mask_blur_y,
                       Mask_mode="Inpaint not masked" if self.invert_mask else None,
                       Masked_content=MASKED_CONTENT[self.inpainting_fill].replace("-", " "),
                       Inpaint_area="Only masked" if self.only_masked else None,
                       Masked_area_padding=self.padding if self.only_masked else None)
        if self.resize_mode:
            out["Resize_mode"] = list(RESIZE_NAMES)[self.resize_mode]
        return out

    def check(self) -> None:
        if not 0 <= self.strength <= 1:
            raise InputError(f"denoising strength must be from 0 to 1 (got {self.strength})")
        if self.resize_mode not in range(4):
            raise InputError(f"resize mode must be 0-3 ({', '.join(RESIZE_MODES)}); got {self.resize_mode}")
        if self.inpainting_fill not in range(4):
            raise InputError(f"inpainting fill must be 0-3 ({', '.join(MASKED_CONTENT)}); got {self.inpainting_fill}")
        if min(self.mask_blur_x, self.mask_blur_y, self.padding) < 0:
            raise InputError("mask blur and padding must be >= 0")


def steps_for(strength: float, steps: int, exact: bool) -> tuple[int, float]:
    """A1111's img2img step count -> (schedule length, the strength that keeps the steps it runs)."""
    s = min(strength, 0.999)
    if not exact:
        return steps, s
    total = int(steps / s) if s > 0 else 0
    if total < 1:
        raise InputError(f"denoising strength {strength} runs no steps")
    return total, min(1.0, (steps + 0.5) / total)  # int(total * kept) == steps


def resize(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """A1111's resize modes (module docstring), Lanczos."""
    w, h = image.size
    if mode in (0, 3) or (w, h) == (width, height):
        return image.resize((width, height), Image.LANCZOS)
    scale = max(width / w, height / h) if mode == 1 else min(width / w, height / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = image.resize((sw, sh), Image.LANCZOS)
    if mode == 1:
        left, top = (sw - width) // 2, (sh - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    out = Image.new(image.mode, (width, height))
    left, top = (width - sw) // 2, (height - sh) // 2
    out.paste(scaled, (left, top))
    if top > 0:  # the bands above and below: the first and last rows, stretched
        out.paste(scaled.crop((0, 0, sw, 1)).resize((sw, top)), (left, 0))
        out.paste(scaled.crop((0, sh - 1, sw, sh)).resize((sw, height - top - sh)), (left, top + sh))
    if left > 0:
        out.paste(scaled.crop((0, 0, 1, sh)).resize((left, sh)), (0, top))
        out.paste(scaled.crop((sw - 1, 0, sw, sh)).resize((width - left - sw, sh)), (left + sw, top))
    return out


def _gaussian_1d(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Convolve along `axis` with a normalised Gaussian of 2 * int(2.5 * sigma + 0.5) + 1 taps, the border mirrored
    without repeating the edge (OpenCV's default, which A1111 uses)."""
    if sigma <= 0:
        return a
    r = int(2.5 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps /= taps.sum()
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    padded = np.pad(a, pad, mode="reflect")
    n = a.shape[axis]
    return sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A grey mask blurred by sigma blur_x across and blur_y down (A1111's mask blur)."""
    a = np.asarray(mask.convert("L"), dtype=np.float64)
    a = _gaussian_1d(_gaussian_1d(a, blur_x, 1), blur_y, 0)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def _box(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """The mean over 2r + 1 neighbours along `axis` (edges repeated), by cumulative sums: any r costs the same."""
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
    upper, lower = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis), np.take(c, np.arange(n), axis=axis)
    return (upper - lower) / (2 * r + 1)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked region repainted with the colours around it (A1111's "fill"): normalised averages of the unmasked
    pixels (three box blurs, near a Gaussian), from wide to narrow, each replacing the coarser wherever it reaches."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    keep = (np.asarray(mask.convert("L")) < 128).astype(np.float64)[..., None]  # (H, W, 1)
    out = rgb.copy()
    def blur(a: np.ndarray, radius: int) -> np.ndarray:
        for axis in (0, 0, 0, 1, 1, 1):
            a = _box(a, radius, axis)
        return a
    for radius in (128, 32, 8, 2, 1):
        weight = blur(keep, radius)
        out = np.where(weight > 1e-3, blur(rgb * keep, radius) / np.maximum(weight, 1e-6), out)
    out = np.where(keep > 0, rgb, out)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box (x1, y1, x2, y2) around the mask's non-zero pixels plus `padding`, grown to the aspect ratio
    width:height as far as the image allows; None for an empty mask."""
    a = np.asarray(mask.convert("L")) > 0
    if not a.any():
        return None
    ys, xs = np.nonzero(a)
    W, H = mask.size
    x1, y1 = max(0, xs.min() - padding), max(0, ys.min() - padding)
    x2, y2 = min(W, xs.max() + 1 + padding), min(H, ys.max() + 1 + padding)
    want = width / height
    if (x2 - x1) / (y2 - y1) < want:  # too tall: widen
        grow = round((y2 - y1) * want) - (x2 - x1)
        x1, x2 = _grow(x1, x2, grow, W)
    else:
        grow = round((x2 - x1) / want) - (y2 - y1)
        y1, y2 = _grow(y1, y2, grow, H)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, by: int, limit: int) -> tuple[int, int]:
    lo, hi = lo - by // 2, hi + by - by // 2
    if lo < 0:
        hi, lo = min(limit, hi - lo), 0
    if hi > limit:
        lo, hi = max(0, lo - (hi - limit)), limit
    return lo, hi


@dataclass
class Prepared:
    """What the pipeline runs on, and how its images go back: init and mask images at width x height, the region
    they were cut from (only masked), and the originals with the overlay mask that keeps their pixels."""
    images: list[Image.Image]
    mask: Image.Image | None
    region: tuple[int, int, int, int] | None
    originals: list[Image.Image]
    overlay: Image.Image | None

    def finish(self, generated: Image.Image, k: int) -> Image.Image:
        """A generated image -> the result: pasted back into its region, the originals laid over through the mask."""
        original = self.originals[k % len(self.originals)]
        if self.region is not None:
            x1, y1, x2, y2 = self.region
            base = original.convert("RGB").copy()
            base.paste(generated.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
            generated = base
        if self.overlay is None:
            return generated
        return Image.composite(generated.convert("RGB"), original.convert("RGB"), self.overlay)


def prepare(images: list[Image.Image], job: Img2Img, width: int, height: int) -> Prepared:
    """A1111's preparation of init images and mask (module docstring) for a width x height result."""
    if job.mask is None:
        sized = [resize(im.convert("RGB"), width, height, job.resize_mode) for im in images]
        return Prepared(sized, None, None, sized, None)
    mask = job.mask.convert("L")
    if mask.size != images[0].size:  # A1111 resizes a mask of another size to the image's
        mask = mask.resize(images[0].size, Image.LANCZOS)
    if job.invert_mask:
        mask = Image.eval(mask, lambda v: 255 - v)
    mask = blur_mask(mask, job.mask_blur_x, job.mask_blur_y)
    region = crop_region(mask, job.padding, width, height) if job.only_masked else None
    if job.only_masked and region is not None:
        originals = [im.convert("RGB") for im in images]
        cut = [im.crop(region) for im in originals]
        sized, small = [resize(c, width, height, 2) for c in cut], resize(mask.crop(region), width, height, 2)
        overlay = Image.new("L", originals[0].size)
        overlay.paste(mask.crop(region), region[:2])
    else:
        originals = [resize(im.convert("RGB"), width, height, job.resize_mode) for im in images]
        sized, small, region = originals, resize(mask, width, height, job.resize_mode), None
        overlay = Image.eval(small, lambda v: min(255, 2 * v))
    if job.inpainting_fill == 0:
        sized = [fill_masked(im, small) for im in sized]
    return Prepared(sized, small, region, originals, overlay)


def nothing_to_repaint(job: Img2Img) -> bool:
    """An all-black mask (after inverting): A1111 then changes nothing."""
    if job.mask is None:
        return False
    extremes = job.mask.convert("L").getextrema()
    return extremes == (0, 0) if not job.invert_mask else extremes == (255, 255)


def run(pipe, images: list[Image.Image], job: Img2Img, *, width: int, height: int, steps: int,
        **kwargs) -> list[Image.Image]:
    """The job's result images (the pipeline's call arguments in kwargs: prompt, seed, ...)."""
    from . import auto
    job.check()
    prepared = prepare(images, job, width, height)
    n = len(kwargs["prompt"]) if isinstance(kwargs.get("prompt"), list) else 1
    if nothing_to_repaint(job):
        return [prepared.originals[k % len(prepared.originals)] for k in range(n)]
    total, strength = steps_for(job.strength, steps, job.exact_steps)
    common = dict(image=prepared.images, strength=strength, num_inference_steps=total, width=width, height=height)
    if prepared.mask is None:
        out = auto.img2img(pipe)(**common, **kwargs)
    else:
        content = {2: "latent-noise", 3: "latent-nothing"}.get(job.inpainting_fill, "original")
        out = auto.inpainting(pipe)(**common, mask_image=prepared.mask, masked_content=content, **kwargs)
    return [prepared.finish(im, k) for k, im in enumerate(out.images)]
