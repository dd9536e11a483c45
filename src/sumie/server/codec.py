"""Images in JSON bodies: base64 PNGs out (with their A1111 `parameters`), and the metadata of PNGs in."""

from __future__ import annotations

import base64
import io

from PIL import Image

from ..errors import InputError
from ..images import MAX_PIXELS, load_image, png_bytes



def to_base64(image: Image.Image, text: str | None = None) -> str:
    """A PNG of `image`, with `text` as its `parameters` chunk, in base64."""
    return base64.b64encode(png_bytes(image, text)).decode()


def _decode(data: str) -> bytes:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise InputError("is not valid base64") from None


def from_base64(data: str, what: str) -> Image.Image:
    """A base64 image (PNG, JPEG, WebP, ...; a data: URL prefix allowed), loaded (see `images.load_image`)."""
    try:
        raw = _decode(data)
    except InputError as e:
        raise InputError(f"{what} {e}") from None
    return load_image(raw, what)


def png_parameters(data: str) -> str:
    """The `parameters` text of a base64 PNG (with or without a data: prefix). Only the header and text
    chunks are read, never the pixels, so a decompression bomb costs nothing."""
    try:
        raw = _decode(data)
    except InputError as e:
        raise InputError(f"image {e}") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InputError(f"image is {im.width}x{im.height}, over the {MAX_PIXELS} pixel limit")
            return str(im.info.get("parameters", ""))
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise InputError(f"image is not a readable PNG ({e})") from None
