"""Image decoding and preprocessing: bytes in, a uint8 crop out; bounded work, never a crash.

What an image may cost is decided from its header, and a JPEG's scan count from its markers,
before any pixel is decoded (`image_limits.check_image`); only formats on `ACCEPTED_FORMATS` are
opened, and of a multi-frame image only the first frame is decoded. The centre square is cut in
source coordinates and resized once, so no intermediate image is larger than the source.

The crop stays uint8 (H x W x 3) until the Recognizer normalises a whole batch at once: it is a
quarter of the bytes of float32 on the way between processes.
"""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from serve_app.config import LimitsConfig, PreprocessSpec
from serve_app.errors import BadRequest, InvalidImage, UnsupportedMediaType
from serve_app.serving.image_limits import ImageHeader, check_image, jpeg_coefficient_bytes

# Our own limits are checked from the header (image_limits); PIL's global pixel limit would raise a
# different error type, and its warning would be noise.
Image.MAX_IMAGE_PIXELS = None
# PNG text chunks are metadata we never read, yet Pillow inflates them while opening the file, up to
# 64 MiB by default: a 100 KB file of compressed zTXt costs that much before any of our checks.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024

# The formats we decode, as Pillow names them, with the signatures they start with. Bytes with one
# of these signatures that Pillow cannot open are a broken image (400); anything else is not an
# image we take (415).
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "WEBP": (b"RIFF",),  # and "WEBP" at offset 8, checked in sniff_format
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),  # classic and BigTIFF
}
ACCEPTED_FORMATS: tuple[str, ...] = tuple(_SIGNATURES)
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, GIF, WebP, BMP, TIFF"

# Modes converted before resizing, on the source region the crop needs: palette indices and 1-bit
# pixels cannot be interpolated, and Pillow would premultiply alpha, which the RGB crop drops
# anyway. Every other mode is resized as it is and converted once the crop is small.
_CONVERT_BEFORE_RESIZE = {
    "1": "L",
    "LA": "L",
    "La": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGBA": "RGB",
    "RGBa": "RGB",
}

_STRIP_ROWS = 256

# EXIF orientation (tag 0x0112) -> the transpose that shows the picture upright.
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose signature the bytes start with, or None."""
    for fmt, signatures in _SIGNATURES.items():
        if data.startswith(signatures) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return fmt
    return None


def looks_like_image(data: bytes) -> bool:
    """True when the bytes start with the signature of an accepted format."""
    return sniff_format(data) is not None


def read_header(data: bytes, spec: PreprocessSpec, limits: LimitsConfig) -> ImageHeader:
    """The image's header facts, once they pass the per-image limits; no pixel is decoded."""
    img, header = _open_checked(data, spec, limits)
    img.close()
    return header


def decode_and_crop(
    data: bytes, spec: PreprocessSpec, limits: LimitsConfig | None = None
) -> np.ndarray:
    """Decode an encoded image and return its resized, centre-cropped RGB pixels (crop x crop x 3,
    uint8); the limits are checked from the header first."""
    img, _ = _open_checked(data, spec, limits or LimitsConfig())
    with img:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()  # the first frame only: we never seek
                crop = resize_and_crop(img, spec)
                orientation = _orientation(img)
        except Exception as exc:  # truncated data raises OSError, broken palettes ValueError, ...
            raise InvalidImage(f"the image data is truncated or corrupt: {exc}") from None
    return upright(crop, orientation)


def _open_checked(
    data: bytes, spec: PreprocessSpec, limits: LimitsConfig
) -> tuple[Image.Image, ImageHeader]:
    """The opened, not yet decoded image and its header, after the per-image limits."""
    if not data:
        raise BadRequest("empty image: the request carried no image bytes")
    try:
        with warnings.catch_warnings():  # Pillow warns of broken metadata it then ignores
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        if looks_like_image(data):
            raise InvalidImage("the image header is corrupt and cannot be read") from None
        raise UnsupportedMediaType(
            f"the bytes are not an image in a supported format ({ACCEPTED_FORMATS_TEXT})"
        ) from None
    except Exception as exc:  # PIL raises assorted errors on hostile headers
        raise InvalidImage(f"the image cannot be read: {exc}") from None
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"the image has no pixels ({width}x{height})")
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing; draft keeps the result at
        # least `resize` on each side, so the bilinear resize still does the final step.
        try:
            img.draft("RGB", (spec.resize, spec.resize))
        except Exception as exc:
            raise InvalidImage(f"the image cannot be read: {exc}") from None
        is_jpeg = img.format in ("JPEG", "MPO")
        # Counted from the bytes, at most one past the limit: the count costs a marker search
        # per scan, however many scans the file holds.
        scans = jpeg_scans(data, limits.max_jpeg_scans + 1) if is_jpeg else 0
        buffers = _jpeg_buffer_bytes(img, scans, width, height) if is_jpeg else 0
        header = ImageHeader(img.format, width, height, img.size, img.mode, buffers, scans)
        check_image(header, limits)
    except BaseException:
        img.close()
        raise
    return img, header


def _jpeg_buffer_bytes(img: Image.Image, scans: int, width: int, height: int) -> int:
    """The whole-image coefficient buffer libjpeg allocates for a progressive or multi-scan JPEG;
    0 for a single-scan one, which is decoded a few rows at a time."""
    if not img.info.get("progressive") and scans < 2:
        return 0
    sampling = [(h, v) for _, h, v, _ in getattr(img, "layer", [])] or [(1, 1)]
    return jpeg_coefficient_bytes(width, height, sampling)


# A marker: 0xFF then a code that is not a stuffed zero, a restart marker or another fill byte.
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def jpeg_scans(data: bytes, enough: int = 2) -> int:
    """Start-of-scan markers in the first image of a JPEG, counted up to `enough`. Segments are
    skipped by their length (an EXIF thumbnail inside one is not counted) and entropy-coded data
    by searching for the next marker (0xFF inside it is always followed by 0x00)."""
    scans, at = 0, 2
    while scans < enough:
        found = _JPEG_MARKER.search(data, at)
        if found is None or data[found.start() + 1] == 0xD9:  # end of the first image
            break
        start, marker = found.start(), data[found.start() + 1]
        if marker in (0x01, 0xD8):  # markers without a length
            at = found.end()
            continue
        scans += marker == 0xDA
        at = start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")
    return scans


def source_box(width: int, height: int, spec: PreprocessSpec) -> tuple[float, ...]:
    """The centre crop in source coordinates: the `crop` square of the image resized so its shorter
    side is `resize`, as (left, top, right, bottom)."""
    scale = spec.resize / min(width, height)
    new_w, new_h = max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale))
    left, top = (new_w - spec.crop) // 2, (new_h - spec.crop) // 2
    # Pillow resizes each axis by new/old; the same factors map the crop back onto the source.
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy)


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to `spec.resize` (bilinear), then take the centre `spec.crop`
    square, in one resize of the source box (crop x crop x 3, uint8)."""
    box = source_box(*img.size, spec)
    size = (spec.crop, spec.crop)
    if img.mode in _CONVERT_BEFORE_RESIZE:
        crop = _convert_and_resize(img, box, size, _CONVERT_BEFORE_RESIZE[img.mode])
    else:
        crop = img.resize(size, Image.Resampling.BILINEAR, box=box)
    return np.asarray(_to_rgb(crop), dtype=np.uint8)


def _convert_and_resize(
    img: Image.Image, box: tuple[float, ...], size: tuple[int, int], mode: str
) -> Image.Image:
    """What `img.convert(mode).resize(size, BILINEAR, box=box)` gives, with only a strip of the
    source converted at a time.

    Pillow resizes in two passes, rows then columns, rounding to 8 bits in between. The row pass is
    done here on strips (rows are independent), each converted just before, into an image `size[0]`
    wide; the column pass then runs on that. The filter reads the same source pixels, so the result
    is the same, and nothing beside the source is larger than `size[0]` x the rows the box spans.
    """
    left, top, right, bottom = _filter_region(box, img.size, size)
    wide = Image.new(mode, (size[0], bottom - top))
    for y in range(top, bottom, _STRIP_ROWS):
        strip = img.crop((left, y, right, min(y + _STRIP_ROWS, bottom))).convert(mode)
        row_box = (box[0] - left, 0, box[2] - left, strip.height)
        wide.paste(
            strip.resize((size[0], strip.height), Image.Resampling.BILINEAR, row_box), (0, y - top)
        )
    column_box = (0, box[1] - top, size[0], box[3] - top)
    return wide.resize(size, Image.Resampling.BILINEAR, box=column_box)


def _filter_region(
    box: tuple[float, ...], image_size: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The whole-pixel source region the bilinear filter reads when resizing this box to `size`:
    the box widened by the filter's reach (one output pixel in source pixels, at least one), within
    the image."""
    reach_x = math.ceil(max(1.0, (box[2] - box[0]) / size[0])) + 1
    reach_y = math.ceil(max(1.0, (box[3] - box[1]) / size[1])) + 1
    return (
        max(0, math.floor(box[0]) - reach_x),
        max(0, math.floor(box[1]) - reach_y),
        min(image_size[0], math.ceil(box[2]) + reach_x),
        min(image_size[1], math.ceil(box[3]) + reach_y),
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of a small image in any mode; 16-bit samples keep their high byte (Pillow's own
    conversion would clip everything above 255 to white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        high = np.asarray(img).astype(np.int64) >> 8
        img = Image.fromarray(np.clip(high, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) the image asks to be shown in; 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return value if value in _UPRIGHT else 1
    except Exception:  # a broken EXIF block leaves the pixels as stored; the request goes on
        return 1


def upright(crop: np.ndarray, orientation: int) -> np.ndarray:
    """The crop turned the way EXIF orientation says the picture is shown (1: as stored)."""
    if orientation not in _UPRIGHT:
        return crop
    return np.asarray(Image.fromarray(crop).transpose(_UPRIGHT[orientation]))


def normalize_batch(crops: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Stack uint8 HWC crops into a float32 NCHW batch, scaled to [0, 1] and normalised by
    mean/std."""
    batch = np.stack(crops).astype(np.float32)
    scale = np.asarray(spec.std, dtype=np.float32) * 255.0
    offset = np.asarray(spec.mean, dtype=np.float32) * 255.0
    batch -= offset
    batch /= scale
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
