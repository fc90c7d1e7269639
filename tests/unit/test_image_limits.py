"""What an image may cost, judged from its header: the arithmetic of each limit."""

import pytest

from serve_app.config import LimitsConfig
from serve_app.errors import PayloadTooLarge, UnprocessableEntity
from serve_app.serving.image_limits import (
    ImageHeader,
    bytes_per_pixel,
    check_image,
    check_request,
    jpeg_coefficient_bytes,
)

LIMITS = LimitsConfig(
    max_image_pixels=4_000_000,
    max_aspect_ratio=20,
    max_decoded_bytes=12 * 2**20,
    max_request_decoded_bytes=48 * 2**20,
)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("1", 1),  # 1 band, 1-bit pixels decode to a byte each
        ("L", 1),
        ("P", 1),
        ("I;16", 2),  # 16-bit PNG grey: 1 band x 2 bytes
        ("I;16B", 2),
        ("LA", 2),
        ("RGB", 3),
        ("RGBA", 4),
        ("CMYK", 4),
        ("I", 4),  # 1 band x int32
        ("F", 4),  # 1 band x float32
    ],
)
def test_bytes_per_pixel_is_bands_times_bytes_per_sample(mode, expected):
    assert bytes_per_pixel(mode) == expected


def header(w, h, mode="RGB", decoded=None, buffers=0, fmt="PNG", scans=0):
    return ImageHeader(fmt, w, h, decoded or (w, h), mode, buffers, scans)


@pytest.mark.parametrize(
    "image, error, key",
    [
        (header(1, 21), UnprocessableEntity, "max_aspect_ratio"),  # 21/1 = 21 > 20
        (header(2100, 100), UnprocessableEntity, "max_aspect_ratio"),  # 2100/100 = 21 > 20
        (header(2001, 2000), PayloadTooLarge, "max_image_pixels"),  # 4_002_000 > 4_000_000
        # 2000 x 2000 RGBA = 16_000_000 bytes > 12 MiB = 12_582_912
        (header(2000, 2000, "RGBA"), PayloadTooLarge, "max_decoded_bytes"),
        # 1000 x 1000 RGB = 3_000_000 + 10_000_000 of coefficient buffers > 12_582_912
        (header(1000, 1000, buffers=10_000_000), PayloadTooLarge, "max_decoded_bytes"),
        # a small image, yet 65 passes over it: the default limit is 64
        (header(64, 64, fmt="JPEG", scans=65), UnprocessableEntity, "max_jpeg_scans"),
    ],
)
def test_over_a_limit_is_refused_naming_the_value_and_the_key(image, error, key):
    with pytest.raises(error) as err:
        check_image(image, LIMITS)
    assert f"limits.{key}" in err.value.message
    assert str(getattr(LIMITS, key)).rstrip("0").rstrip(".") in err.value.message


@pytest.mark.parametrize(
    "image",
    [
        header(1, 20),  # 20/1 = 20: at the limit, not over
        header(2000, 2000),  # 4_000_000 pixels x 3 = 12_000_000 <= 12_582_912
        header(2000, 2000, "I;16"),  # x 2 = 8_000_000
        # A 4000x1000 JPEG decoded at 1/4 scale: 1000x250 RGB = 750_000 bytes.
        header(4000, 1000, decoded=(1000, 250), fmt="JPEG"),
        header(2000, 2000, fmt="JPEG", scans=64),  # at the scan limit
        header(2000, 2000, fmt="JPEG", scans=10),  # libjpeg's standard progression
    ],
)
def test_within_every_limit_passes(image):
    check_image(image, LIMITS)


def test_request_budget_sums_the_images():
    # 4 x 12_000_000 = 48_000_000 <= 48 MiB = 50_331_648; a fifth makes 60_000_000.
    four = [header(2000, 2000)] * 4
    check_request(four, LIMITS)
    with pytest.raises(PayloadTooLarge) as err:
        check_request(four + [header(2000, 2000)], LIMITS)
    assert "60000000 bytes" in err.value.message
    assert "limits.max_request_decoded_bytes" in err.value.message


@pytest.mark.parametrize(
    "size, sampling, expected",
    [
        # 4:4:4, 64x64: 3 components x 8x8 blocks x 64 coefficients x 2 bytes = 24_576
        ((64, 64), [(1, 1)] * 3, 3 * 64 * 64 * 2),
        # 4:2:0, 64x64: Y 8x8 blocks, Cb and Cr 32x32 -> 4x4 blocks each; (64 + 16 + 16) x 128
        ((64, 64), [(2, 2), (1, 1), (1, 1)], (64 + 16 + 16) * 128),
        # 10x10 grey: ceil(10/8) = 2 blocks each way -> 4 x 128 = 512
        ((10, 10), [(1, 1)], 512),
    ],
)
def test_jpeg_coefficient_bytes(size, sampling, expected):
    assert jpeg_coefficient_bytes(*size, sampling) == expected


def test_a_request_budget_below_one_image_is_a_config_error():
    with pytest.raises(ValueError, match="max_request_decoded_bytes"):
        LimitsConfig(max_decoded_bytes=2**20, max_request_decoded_bytes=2**19)


def test_the_scan_limit_is_the_configured_one():
    tight = LimitsConfig(max_jpeg_scans=10)
    check_image(header(64, 64, fmt="JPEG", scans=10), tight)
    with pytest.raises(UnprocessableEntity, match=r"more than 10 scans.*limits\.max_jpeg_scans"):
        check_image(header(64, 64, fmt="JPEG", scans=11), tight)
