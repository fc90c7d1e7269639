"""Image decoding and preprocessing: bytes in, a uint8 crop out; never crashes on garbage.

The crop stays uint8 (H x W x 3) until the Recognizer normalises a whole batch at once: it is a
quarter of the bytes of float32 on the way between processes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from serve_app.config import PreprocessSpec
from serve_app.errors import BadRequest, InvalidImage, PayloadTooLarge, UnsupportedMediaType

# We enforce our own pixel limit from the header (configurable, 413); PIL's global one would raise a
# different error type after part of the work is done.
Image.MAX_IMAGE_PIXELS = None

# Magic numbers of the formats PIL decodes that users send; used only to tell "not an image at all"
# (415) from "an image that is broken" (400).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes) -> bool:
    """True when the bytes start with the signature of a known image format."""
    return data.startswith(_SIGNATURES)


def decode_and_crop(data: bytes, spec: PreprocessSpec, max_pixels: int) -> np.ndarray:
    """Decode an encoded image and return its resized, centre-cropped RGB pixels (crop x crop x 3,
    uint8)."""
    if not data:
        raise BadRequest("empty image: the request carried no image bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if looks_like_image(data):
            raise InvalidImage("the image header is corrupt and cannot be read") from None
        raise UnsupportedMediaType(
            "the bytes are not an image in a supported format (JPEG, PNG, GIF, WebP, BMP, TIFF)"
        ) from None
    except Exception as exc:  # PIL raises assorted errors on hostile headers
        raise InvalidImage(f"the image cannot be read: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}"
        )
    try:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing; draft keeps the result at
        # least `resize` on each side, so the bilinear resize below still does the final step.
        img.draft("RGB", (spec.resize, spec.resize))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = img.convert("RGB")
    except Exception as exc:  # truncated data raises OSError, broken palettes ValueError, ...
        raise InvalidImage(f"the image data is truncated or corrupt: {exc}") from None
    return resize_and_crop(img, spec)


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to `spec.resize` (bilinear), then take the centre `spec.crop`
    square."""
    width, height = img.size
    scale = spec.resize / min(width, height)
    new_w, new_h = max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - spec.crop) // 2, (new_h - spec.crop) // 2
    img = img.crop((left, top, left + spec.crop, top + spec.crop))
    return np.asarray(img, dtype=np.uint8)


def normalize_batch(crops: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Stack uint8 HWC crops into a float32 NCHW batch, scaled to [0, 1] and normalised by
    mean/std."""
    batch = np.stack(crops).astype(np.float32)
    scale = np.asarray(spec.std, dtype=np.float32) * 255.0
    offset = np.asarray(spec.mean, dtype=np.float32) * 255.0
    batch -= offset
    batch /= scale
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
