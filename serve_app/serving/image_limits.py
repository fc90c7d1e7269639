"""What an image may cost, decided from its header before any pixel is decoded.

Pure functions of the header's facts and the `limits:` section: the aspect ratio and a JPEG's
scan count (422), the pixel count and the decoded size of one image (413), and the decoded size of
all images of a request (413). Every refusal names the limit, the value and the config key, so the
client knows what to change and the operator knows what to raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageMode

from serve_app.config import LimitsConfig
from serve_app.errors import PayloadTooLarge, UnprocessableEntity

SECTION = "limits"


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: format and declared size, and the size and mode the decoder will
    write (JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the model's input)."""

    format: str
    width: int
    height: int
    decoded_size: tuple[int, int]
    mode: str
    # Working memory the decoder keeps beside the pixels: a progressive or multi-scan JPEG holds
    # the DCT coefficients of the whole image at full size, whatever the scale it decodes at.
    buffer_bytes: int = 0
    # Scans of a JPEG, counted up to one past the limit (0 for other formats): the decoder passes
    # over the whole image once per scan, so a few bytes of each cost CPU out of proportion.
    scans: int = 0

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded pixels (width x height x bands x bytes per sample) plus the
        decoder's whole-image buffers."""
        return decoded_bytes(*self.decoded_size, self.mode) + self.buffer_bytes


def bytes_per_pixel(mode: str) -> int:
    """Bands x bytes per sample of a Pillow mode: L 1, I;16 2, RGB 3, RGBA and CMYK 4, F 4."""
    info = ImageMode.getmode(mode)
    # typestr is a numpy dtype string ('|u1', '<u2', '<f4'); 1-bit pixels decode to a byte each.
    return len(info.bands) * int(info.typestr[2:])


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Bytes the decoder writes for a width x height image in this mode."""
    return width * height * bytes_per_pixel(mode)


def jpeg_coefficient_bytes(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    """Bytes libjpeg holds for a whole-image coefficient buffer: per component, its 8x8 blocks x
    64 coefficients x 2 bytes; `sampling` is each component's (horizontal, vertical) factor."""
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        blocks_x = math.ceil(math.ceil(width * h / h_max) / 8)
        blocks_y = math.ceil(math.ceil(height * v / v_max) / 8)
        total += blocks_x * blocks_y * 64 * 2
    return total


def aspect_ratio(width: int, height: int) -> float:
    """Long side over short side (1.0 for a square)."""
    return max(width, height) / min(width, height)


def check_image(header: ImageHeader, limits: LimitsConfig) -> None:
    """Refuse one image whose shape or decoded size is over the limits; the pixels are not
    touched."""
    w, h = header.width, header.height
    ratio = aspect_ratio(w, h)
    if ratio > limits.max_aspect_ratio:
        raise UnprocessableEntity(
            f"the image is {w}x{h}, aspect ratio {ratio:.4g}:1, over the limit of "
            f"{limits.max_aspect_ratio:g}:1 ({SECTION}.max_aspect_ratio)"
        )
    if header.scans > limits.max_jpeg_scans:
        raise UnprocessableEntity(
            f"the JPEG has more than {limits.max_jpeg_scans} scans, the limit "
            f"({SECTION}.max_jpeg_scans): each scan is a decoding pass over the whole image; "
            "re-encode it as baseline or with a standard progression (about 10 scans)"
        )
    if w * h > limits.max_image_pixels:
        raise PayloadTooLarge(
            f"the image is {w}x{h} = {w * h} pixels, over the limit of "
            f"{limits.max_image_pixels} ({SECTION}.max_image_pixels)"
        )
    size = header.decoded_bytes
    if size > limits.max_decoded_bytes:
        dw, dh = header.decoded_size
        buffers = (
            f" with {header.buffer_bytes} bytes of decoder buffers" if header.buffer_bytes else ""
        )
        raise PayloadTooLarge(
            f"the {header.format} image would decode to {dw}x{dh} {header.mode}{buffers} = {size} "
            f"bytes, over the limit of {limits.max_decoded_bytes} ({SECTION}.max_decoded_bytes)"
        )


def check_request(headers: list[ImageHeader], limits: LimitsConfig) -> None:
    """Refuse a request whose images together would decode to more than the request budget."""
    total = sum(h.decoded_bytes for h in headers)
    if total > limits.max_request_decoded_bytes:
        raise PayloadTooLarge(
            f"the request's {len(headers)} images would decode to {total} bytes in all, over "
            f"the limit of {limits.max_request_decoded_bytes} "
            f"({SECTION}.max_request_decoded_bytes)"
        )
