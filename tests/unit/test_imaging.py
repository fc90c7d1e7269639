import io

import numpy as np
import pytest
from PIL import Image

from serve_app.config import PreprocessSpec
from serve_app.errors import BadRequest, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from serve_app.serving.imaging import decode_and_crop, normalize_batch, resize_and_crop

SPEC = PreprocessSpec(resize=256, crop=224, mean=(0.498,) * 3, std=(0.502,) * 3)


def test_photo_becomes_a_uint8_crop(cat_jpeg):
    crop = decode_and_crop(cat_jpeg, SPEC, max_pixels=10_000_000)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert crop.std() > 10  # a real photo, not a flat fill


@pytest.mark.parametrize(
    "size, resized",
    [
        ((451, 300), (385, 256)),  # shorter side 300 -> 256, 451 * 256/300 = 384.85 -> 385
        ((300, 600), (256, 512)),
        ((100, 50), (512, 256)),  # upscaled: shorter side 50 -> 256
    ],
)
def test_resize_shorter_side_then_centre_crop(size, resized):
    img = Image.new("RGB", size)
    # A marker exactly at the centre must stay at the centre of the crop.
    img.putpixel((size[0] // 2, size[1] // 2), (255, 0, 0))
    crop = resize_and_crop(img, SPEC)
    assert crop.shape == (224, 224, 3)
    red = np.argwhere(crop[..., 0] > 0)
    assert abs(red[:, 0].mean() - 112) < 3 and abs(red[:, 1].mean() - 112) < 3


def test_normalize_matches_mean_std_arithmetic():
    crop = np.full((224, 224, 3), 255, dtype=np.uint8)
    batch = normalize_batch([crop, np.zeros_like(crop)], SPEC)
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    # (1.0 - 0.498) / 0.502 = 1.0 ; (0 - 0.498) / 0.502 = -0.99203
    assert np.allclose(batch[0], 1.0, atol=1e-5)
    assert np.allclose(batch[1], -0.498 / 0.502, atol=1e-5)


def test_empty_bytes_is_bad_request():
    with pytest.raises(BadRequest):
        decode_and_crop(b"", SPEC, 10**7)


def test_text_is_unsupported_media_type():
    with pytest.raises(UnsupportedMediaType):
        decode_and_crop(b"hello, this is not an image at all", SPEC, 10**7)


def test_truncated_jpeg_is_invalid_image(cat_jpeg):
    with pytest.raises(InvalidImage):
        decode_and_crop(cat_jpeg[: len(cat_jpeg) // 3], SPEC, 10**7)


def test_corrupt_header_is_invalid_image():
    with pytest.raises(InvalidImage):
        decode_and_crop(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, SPEC, 10**7)


def test_pixel_bomb_refused_from_header_before_decoding():
    # 20000 x 20000 PNG of one colour: ~1 MB compressed, 1.2 GB decoded.
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(PayloadTooLarge) as err:
        decode_and_crop(buf.getvalue(), SPEC, max_pixels=40_000_000)
    assert "400000000 pixels" in err.value.message


def test_png_with_alpha_and_greyscale_are_converted(coffee_png):
    rgba = Image.open(io.BytesIO(coffee_png)).convert("RGBA")
    for img in (rgba, rgba.convert("L")):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        assert decode_and_crop(buf.getvalue(), SPEC, 10**7).shape == (224, 224, 3)
