"""Decode an image file to the picture it shows, in a mode that ``Image.convert("RGB")`` turns into that picture.

Backbones convert each item to RGB with ``Image.convert("RGB")``, which gets two kinds of file wrong: 16-bit
samples are clipped (a 16-bit grayscale PNG reads as near-white) and a photo's EXIF orientation is ignored.
Both are fixed here, and the rest is made explicit:

* EXIF orientation is applied (the picture as displayed, not as stored).
* 16-bit grayscale (PNG or TIFF) is scaled to 8 bits, ``round(v / 257)``; Pillow itself reads 16-bit RGB
  as its 8-bit high bytes.
* A palette image with a transparent colour becomes RGBA; transparency is dropped by the RGB conversion,
  each pixel keeping its colour.
* CMYK is left to Pillow's formula (an embedded ICC profile is not applied).
* An animated image (GIF, WebP, APNG) is read as its first frame.

Every other mode (L, LA, RGB, RGBA, CMYK, ...) is kept, so the size and mode of ordinary files are unchanged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["decode"]

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode(image: Image.Image) -> Image.Image:
    """The picture ``image`` shows (its first frame, if animated), as a new 8-bit image.

    Parameters
    ----------
    image : PIL.Image.Image
        An image just opened from a file.

    Returns
    -------
    PIL.Image.Image
        A loaded copy whose ``convert("RGB")`` is the picture as a viewer displays it.
    """
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)  # a loaded copy, rotated and flipped as the EXIF orientation says
    if image.mode in _SIXTEEN_BIT:
        samples = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(samples / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA")
    return image
