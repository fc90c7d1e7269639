"""A generated corpus of hostile and unusual images, sized against the `limits:` in force.

Nothing is downloaded: every case is built here from a real photo (scikit-image's Chelsea) or by
writing the file format by hand (headers that lie, canvases that inflate from a few KB). Each case
says what the service must answer: a crop (optionally compared with the crop the definition gives:
resize the shorter side, then cut the centre) or one of the 4xx statuses listed.

tests/decode_peaks.py measures the peak resident memory each case's decode adds.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from serve_app.config import LimitsConfig, PreprocessSpec

CROP = "crop"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INCIDENT_HEIGHT = 30_000_000  # the 117 KB PNG, 1 pixel wide, that grew a replica to 20 GB
TEST_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve_config.test.yaml"


@dataclass(frozen=True)
class Case:
    """One image and what the service must make of it."""

    name: str
    data: bytes = field(repr=False)
    expect: frozenset  # CROP and/or HTTP statuses
    reference: np.ndarray | None = field(default=None, repr=False, compare=False)
    max_mean_diff: float = 0.0  # mean |crop - reference| allowed (lossy formats, dithering)


def reference_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The crop by its definition, the long way: RGB, shorter side to `resize`, centre square."""
    img = img.convert("RGB")
    w, h = img.size
    scale = spec.resize / min(w, h)
    new_w, new_h = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - spec.crop) // 2, (new_h - spec.crop) // 2
    return np.asarray(img.crop((left, top, left + spec.crop, top + spec.crop)))


def saved(img: Image.Image, fmt: str, **kwargs) -> bytes:
    """The image encoded by Pillow in a format."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def blank_png(width: int, height: int, color_type: int = 0, bit_depth: int = 8) -> bytes:
    """A PNG of zeros written by hand: a canvas of any size from a few KB, compressed in slices so
    building it never holds the raw pixels."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    raw_size = height * (1 + math.ceil(width * channels * bit_depth / 8))
    packer, idat, slab = zlib.compressobj(9), [], bytes(1 << 22)
    for start in range(0, raw_size, len(slab)):
        idat.append(packer.compress(slab[: min(len(slab), raw_size - start)]))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    palette = png_chunk(b"PLTE", bytes(3)) if color_type == 3 else b""
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + palette
        + png_chunk(b"IDAT", b"".join(idat))
        + png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header declares width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + idat + png_chunk(b"IEND", b"")


def png_16bit_rgb(rgb8: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow does not write one): each sample x 257."""
    rows = (rgb8.astype(">u2") * 257).reshape(rgb8.shape[0], -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    h, w = rgb8.shape[:2]
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def png_text_bomb(chunks: int = 100) -> bytes:
    """An 8x8 PNG carrying `chunks` zTXt chunks that each inflate to 1 MiB."""
    text = zlib.compress(bytes(1 << 20), 9)
    ztxt = b"".join(png_chunk(b"zTXt", b"k%d\x00\x00" % i + text) for i in range(chunks))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(bytes(9 * 8)))
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + ztxt + idat + png_chunk(b"IEND", b"")


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian TIFF written by hand whose header declares width x height 8-bit grey
    pixels, with one strip of 16 bytes."""
    tags = [
        (256, 4, width),  # ImageWidth, LONG
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample, SHORT
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 0),  # StripOffsets, patched below
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, 16),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    strip_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)))
    for tag, kind, value in tags:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    out += struct.pack("<I", 0) + bytes(16)
    return bytes(out)


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) patched to declare width x height."""
    out = bytearray(jpeg)
    at = out.index(b"\xff\xc0")
    out[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def jpeg_segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(start, end, marker) of each segment from after SOI to EOI; a scan (SOS) runs on through its
    entropy-coded data to the next marker that is neither a stuffed 0xFF nor a restart."""
    out, at = [], 2
    while True:
        if jpeg[at] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {at}")
        marker = jpeg[at + 1]
        if marker == 0xD9:
            out.append((at, at + 2, marker))
            return out
        end = at + 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
        if marker == 0xDA:
            end = jpeg.index(b"\xff", end)
            while jpeg[end + 1] == 0x00 or 0xD0 <= jpeg[end + 1] <= 0xD7:
                end = jpeg.index(b"\xff", end + 2)
        out.append((at, end, marker))
        at = end


def jpeg_with_scans(img: Image.Image, scans: int) -> bytes:
    """A progressive JPEG of `img` holding `scans` scans: its last scan, with the Huffman table
    written before it, repeated. libjpeg decodes every repeat as one more pass over all blocks; of
    a flat image a repeat is a few dozen bytes, so thousands of scans fit in a small file."""
    jpeg = saved(img, "JPEG", progressive=True)
    segments = jpeg_segments(jpeg)
    markers = [marker for _, _, marker in segments]
    last = max(i for i, marker in enumerate(markers) if marker == 0xDA)
    first = last - 1 if markers[last - 1] == 0xC4 else last
    written = markers.count(0xDA)
    if scans < written:
        raise ValueError(f"the encoder wrote {written} scans already, more than {scans}")
    end = segments[last][1]
    return jpeg[:end] + jpeg[segments[first][0] : end] * (scans - written) + jpeg[end:]


def gif_with_screen(gif: bytes, width: int, height: int) -> bytes:
    """The GIF with its logical screen patched to width x height."""
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def bmp_declaring(bmp: bytes, width: int, height: int) -> bytes:
    """The BMP with its info header patched to declare width x height."""
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


def webp_declaring(webp: bytes, width: int, height: int) -> bytes:
    """A lossy WebP with its VP8 key frame header patched to declare width x height (< 16384)."""
    out = bytearray(webp)
    at = out.index(b"\x9d\x01\x2a") + 3
    out[at : at + 4] = struct.pack("<HH", width, height)
    return bytes(out)


def jpeg_with_exif(img: Image.Image, exif: bytes) -> bytes:
    """A JPEG whose APP1 segment carries these EXIF bytes (valid or not)."""
    return saved(img, "JPEG", quality=92, exif=exif)


def exif_orientation(value: int) -> bytes:
    """EXIF bytes with only the orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def photo() -> Image.Image:
    """Chelsea the cat, 451x300 RGB, a real photo."""
    from skimage import data

    return Image.fromarray(data.chelsea())


def frames(size=(40, 30)) -> list[Image.Image]:
    """Red, green, blue: a crop that is red came from the first frame only."""
    return [Image.new("RGB", size, c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]


def service_test_limits() -> LimitsConfig:
    """The `limits:` of configs/serve_config.test.yaml, which the integration service runs with."""
    doc = yaml.safe_load(TEST_CONFIG.read_text())
    return LimitsConfig.model_validate(doc["applications"][0]["args"]["limits"])


def largest_rgb_side(limits: LimitsConfig) -> int:
    """The side of the largest square RGB image every per-image limit lets through."""
    return min(math.isqrt(limits.max_image_pixels), math.isqrt(limits.max_decoded_bytes // 3))


def request_over_budget(limits: LimitsConfig) -> list[bytes]:
    """The fewest largest-allowed RGB images whose decoded bytes together pass the request
    budget: each one alone is accepted."""
    side = largest_rgb_side(limits)
    count = limits.max_request_decoded_bytes // (3 * side * side) + 1
    if count > limits.max_images_per_request:
        raise ValueError(
            "limits: the request budget cannot be passed within max_images_per_request"
        )
    return [blank_png(side, side, color_type=2)] * count


def corpus(limits: LimitsConfig, spec: PreprocessSpec) -> list[Case]:
    """Every case, sized against these limits (see the module docstring)."""
    return _formats(spec) + _modes(spec) + _frames(spec) + _shapes(limits, spec) + _broken(limits)


# PNG colour type and bit depth -> the mode Pillow decodes to, and its bytes per pixel by the
# limits' count (bands x bytes per sample).
_PNG_MODES = {
    "L": (0, 8, 1),
    "1": (0, 1, 1),
    "I;16": (0, 16, 2),
    "RGB": (2, 8, 3),
    "RGB from 48-bit": (2, 16, 3),
    "P": (3, 8, 1),
    "LA": (4, 8, 2),
    "RGBA": (6, 8, 4),
}


def at_the_limits(limits: LimitsConfig, spec: PreprocessSpec) -> list[Case]:
    """Each decoded mode at the largest square the limits let through: the costliest decodes a
    replica accepts, all blank (the crop is black)."""
    black = np.zeros((spec.crop, spec.crop, 3), np.uint8)
    cases = []
    for mode, (color_type, depth, per_pixel) in _PNG_MODES.items():
        side = math.isqrt(min(limits.max_image_pixels, limits.max_decoded_bytes // per_pixel))
        data = blank_png(side, side, color_type, depth)
        cases.append(Case(f"{mode} png {side}x{side}", data, frozenset({CROP}), black, 0))
    # A progressive 4:2:0 JPEG: 3 bytes per pixel of coefficients besides the reduced-scale pixels.
    side = math.isqrt(min(limits.max_image_pixels, limits.max_decoded_bytes // 4))
    jpeg = saved(Image.new("RGB", (side, side)), "JPEG", progressive=True, subsampling=2)
    cases.append(Case(f"progressive jpeg {side}x{side}", jpeg, frozenset({CROP}), black, 1))
    return cases


def _crop_case(name, data, source: Image.Image, spec, tolerance) -> Case:
    return Case(name, data, frozenset({CROP}), reference_crop(source, spec), tolerance)


def _formats(spec) -> list[Case]:
    cat = photo()
    return [
        _crop_case("jpeg photo", saved(cat, "JPEG", quality=92), cat, spec, 3),
        _crop_case("png photo", saved(cat, "PNG"), cat, spec, 1),
        _crop_case("gif photo", saved(cat, "GIF"), cat, spec, 12),  # 256-colour palette
        _crop_case("webp photo", saved(cat, "WEBP", quality=90), cat, spec, 4),
        _crop_case("bmp photo", saved(cat, "BMP"), cat, spec, 1),
        _crop_case("tiff photo", saved(cat, "TIFF"), cat, spec, 1),
        _crop_case(
            "tiff deflate photo", saved(cat, "TIFF", compression="tiff_adobe_deflate"), cat, spec, 1
        ),
        _crop_case(
            "1x1 png",
            saved(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
            Image.new("RGB", (1, 1), (9, 99, 199)),
            spec,
            1,
        ),
    ]


def _modes(spec) -> list[Case]:
    cat = photo()
    grey = cat.convert("L")
    grey16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # mode I;16
    palette = cat.quantize(256)
    bilevel = cat.convert("1")
    rgba = cat.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(cat.size))
    upright_cat = cat.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 shows
    return [
        _crop_case("palette png", saved(palette, "PNG"), palette, spec, 1),
        _crop_case(
            "palette png with transparency", saved(palette, "PNG", transparency=0), palette, spec, 1
        ),
        _crop_case("1-bit png", saved(bilevel, "PNG"), bilevel, spec, 1),
        _crop_case("1-bit bmp", saved(bilevel, "BMP"), bilevel, spec, 1),
        _crop_case("16-bit grey png (I;16)", saved(grey16, "PNG"), grey, spec, 1),
        _crop_case("16-bit grey tiff (I;16)", saved(grey16, "TIFF"), grey, spec, 1),
        _crop_case("48-bit rgb png", png_16bit_rgb(np.asarray(cat)), cat, spec, 1),
        _crop_case("grey jpeg", saved(grey, "JPEG", quality=92), grey, spec, 3),
        _crop_case("cmyk jpeg", saved(cat.convert("CMYK"), "JPEG", quality=92), cat, spec, 4),
        _crop_case("cmyk tiff", saved(cat.convert("CMYK"), "TIFF"), cat, spec, 1),
        _crop_case("LA png", saved(rgba.convert("LA"), "PNG"), grey, spec, 1),
        _crop_case("rgba png", saved(rgba, "PNG"), cat, spec, 1),
        _crop_case("rgba webp", saved(rgba, "WEBP", lossless=True), cat, spec, 1),
        _crop_case("float tiff (F)", saved(grey.convert("F"), "TIFF"), grey, spec, 1),
        _crop_case(
            "exif orientation 6", jpeg_with_exif(cat, exif_orientation(6)), upright_cat, spec, 6
        ),
        _crop_case(
            "exif orientation 0 (invalid)", jpeg_with_exif(cat, exif_orientation(0)), cat, spec, 3
        ),
        _crop_case(
            "exif orientation 65535 (invalid)",
            jpeg_with_exif(cat, exif_orientation(65535)),
            cat,
            spec,
            3,
        ),
        _crop_case(
            "progressive jpeg", saved(cat, "JPEG", quality=92, progressive=True), cat, spec, 3
        ),
        _crop_case(
            "exif block holding a jpeg thumbnail",
            jpeg_with_exif(cat, b"Exif\x00\x00" + saved(cat.resize((64, 43)), "JPEG")),
            cat,
            spec,
            3,
        ),
        _crop_case(
            "exif block of garbage",
            jpeg_with_exif(cat, b"Exif\x00\x00" + bytes(range(256)) * 8),
            cat,
            spec,
            3,
        ),
    ]


def _frames(spec) -> list[Case]:
    red, *rest = frames()
    multi = dict(save_all=True, append_images=rest)
    return [
        _crop_case("animated gif: first frame", saved(red, "GIF", **multi), red, spec, 1),
        _crop_case("animated png: first frame", saved(red, "PNG", **multi), red, spec, 1),
        _crop_case(
            "animated webp: first frame", saved(red, "WEBP", lossless=True, **multi), red, spec, 1
        ),
        _crop_case("multi-page tiff: first page", saved(red, "TIFF", **multi), red, spec, 1),
    ]


def _shapes(limits: LimitsConfig, spec) -> list[Case]:
    ratio = math.floor(limits.max_aspect_ratio)
    side = math.isqrt(limits.max_image_pixels)
    # The largest canvas that passes every limit, in RGB; and one within the pixel limit whose
    # RGBA decode is over the byte limit.
    rgb_side = largest_rgb_side(limits)
    if 4 * side * side <= limits.max_decoded_bytes:
        raise ValueError("limits: max_decoded_bytes must be under 4 x max_image_pixels")
    # Progressive: libjpeg keeps 2 bytes per sample of coefficients, 6 per pixel at 4:4:4.
    progressive = saved(
        Image.new("RGB", (side, side), (90, 40, 160)), "JPEG", progressive=True, subsampling=0
    )
    flat = Image.new("RGB", (1024, 1024), (90, 40, 160))
    scans = limits.max_jpeg_scans
    tall = saved(Image.new("RGB", (1, ratio), (200, 30, 30)), "PNG")
    taller = saved(Image.new("RGB", (1, ratio + 1), (200, 30, 30)), "PNG")
    jpeg, gif = saved(photo(), "JPEG"), saved(photo(), "GIF")
    bmp, webp = saved(photo(), "BMP"), saved(photo(), "WEBP")
    over = frozenset({413})
    return [
        Case(
            "the incident: 1 x 30M png",
            blank_png(1, INCIDENT_HEIGHT, color_type=2),
            frozenset({422}),
        ),
        Case("30M x 1 png", blank_png(INCIDENT_HEIGHT, 1), frozenset({422})),
        Case(
            f"1 x {ratio} png (at the ratio limit)",
            tall,
            frozenset({CROP}),
            reference_crop(Image.open(io.BytesIO(tall)), spec),
            1,
        ),
        Case(f"1 x {ratio + 1} png (over the ratio limit)", taller, frozenset({422})),
        Case(
            f"{ratio + 1} x 1 gif", saved(Image.new("P", (ratio + 1, 1)), "GIF"), frozenset({422})
        ),
        Case("png declaring 100000x100000", png_declaring(100_000, 100_000), over),
        Case("jpeg declaring 65000x65000", jpeg_declaring(jpeg, 65_000, 65_000), over),
        Case("gif screen 65535x65535", gif_with_screen(gif, 65_535, 65_535), over),
        Case("bmp declaring 100000x100000", bmp_declaring(bmp, 100_000, 100_000), over),
        Case("tiff declaring 1000000x1000000", tiff_declaring(1_000_000, 1_000_000), over),
        Case("webp declaring 16383x16383", webp_declaring(webp, 16_383, 16_383), over),
        Case(f"png bomb {side + 1}x{side + 1} blank", blank_png(side + 1, side + 1), over),
        Case(
            f"png bomb {side}x{side} blank RGBA (bytes)", blank_png(side, side, color_type=6), over
        ),
        Case(
            f"png {rgb_side}x{rgb_side} blank RGB (largest allowed)",
            blank_png(rgb_side, rgb_side, color_type=2),
            frozenset({CROP}),
            np.zeros((spec.crop, spec.crop, 3), np.uint8),
            0,
        ),
        Case("png text bomb (100 x 1 MiB zTXt)", png_text_bomb(), frozenset({400})),
        Case(f"progressive jpeg {side}x{side} 4:4:4 (coefficients)", progressive, over),
        _crop_case(
            f"progressive jpeg with {scans} scans (at the limit)",
            jpeg_with_scans(flat, scans),
            flat,
            spec,
            2,
        ),
        Case(
            f"progressive jpeg with {scans + 1} scans (over the limit)",
            jpeg_with_scans(flat, scans + 1),
            frozenset({422}),
        ),
        # The decode time grows with the scans while the bytes barely do: the count refuses it.
        Case("progressive jpeg with 2000 scans", jpeg_with_scans(flat, 2000), frozenset({422})),
    ]


def _broken(limits: LimitsConfig) -> list[Case]:
    cat = photo()
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    magic = {
        "jpeg": b"\xff\xd8\xff\xe0",
        "png": PNG_SIGNATURE,
        "gif": b"GIF89a",
        "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
        "bmp": b"BM",
        "tiff": b"II*\x00",
        "bigtiff": b"MM\x00+",
    }
    cases = [
        Case(f"{fmt} magic then noise", sig + noise, frozenset({400})) for fmt, sig in magic.items()
    ]
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        whole = saved(cat, fmt)
        cases.append(
            Case(f"{fmt.lower()} truncated to half", whole[: len(whole) // 2], frozenset({400}))
        )
        cases.append(Case(f"{fmt.lower()} truncated to 16 bytes", whole[:16], frozenset({400})))
    for fmt in ("ICO", "TGA", "PPM", "PCX", "SGI", "QOI"):
        cases.append(Case(f"{fmt.lower()} (not accepted)", saved(cat, fmt), frozenset({415})))
    cases.append(Case("text", b"GET / HTTP/1.1\r\n\r\n", frozenset({415})))
    cases.append(Case("empty", b"", frozenset({400})))
    return cases
