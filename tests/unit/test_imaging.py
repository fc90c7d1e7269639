"""Decoding and cropping: the crop of the definition, cut in source coordinates; typed errors."""

import io

import numpy as np
import pytest
from PIL import Image

from serve_app.config import LimitsConfig, ModelConfig, PreprocessSpec
from serve_app.errors import (
    BadRequest,
    InvalidImage,
    PayloadTooLarge,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from serve_app.serving.imaging import (
    ACCEPTED_FORMATS,
    decode_and_crop,
    jpeg_scans,
    normalize_batch,
    read_header,
    resize_and_crop,
    source_box,
    upright,
)
from serve_app.serving.models import load_model
from serve_app.serving.runtimes import TorchRuntime
from tests.hostile_images import jpeg_with_exif, jpeg_with_scans, reference_crop, saved

SPEC = PreprocessSpec(resize=256, crop=224, mean=(0.498,) * 3, std=(0.502,) * 3)


def test_photo_becomes_a_uint8_crop(cat_jpeg):
    crop = decode_and_crop(cat_jpeg, SPEC)
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
        decode_and_crop(b"", SPEC)


def test_text_is_unsupported_media_type():
    with pytest.raises(UnsupportedMediaType):
        decode_and_crop(b"hello, this is not an image at all", SPEC)


def test_truncated_jpeg_is_invalid_image(cat_jpeg):
    with pytest.raises(InvalidImage):
        decode_and_crop(cat_jpeg[: len(cat_jpeg) // 3], SPEC)


def test_corrupt_header_is_invalid_image():
    with pytest.raises(InvalidImage):
        decode_and_crop(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, SPEC)


def test_pixel_bomb_refused_from_header_before_decoding():
    # 20000 x 20000 PNG of one colour: ~1 MB compressed, 1.2 GB decoded.
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(PayloadTooLarge) as err:
        decode_and_crop(buf.getvalue(), SPEC, LimitsConfig(max_image_pixels=40_000_000))
    assert "400000000 pixels" in err.value.message
    assert "limits.max_image_pixels" in err.value.message


def test_png_with_alpha_and_greyscale_are_converted(coffee_png):
    rgba = Image.open(io.BytesIO(coffee_png)).convert("RGBA")
    for img in (rgba, rgba.convert("L")):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        assert decode_and_crop(buf.getvalue(), SPEC).shape == (224, 224, 3)


@pytest.mark.parametrize(
    "size, box",
    [
        # 451x300: scale 256/300, resized 385x256 (451*0.8533 = 384.85 -> 385); crop at (80, 16).
        # Back in source pixels: x * 451/385 = x * 1.17143, y * 300/256 = y * 1.171875.
        ((451, 300), (80 * 451 / 385, 16 * 300 / 256, 304 * 451 / 385, 240 * 300 / 256)),
        # Square 512: resized 256x256, crop at (16, 16); x 2 back: (32, 32, 480, 480).
        ((512, 512), (32.0, 32.0, 480.0, 480.0)),
        # 1x20: upscaled to 256x5120, crop at (16, 2448); back: /256 on both axes.
        ((1, 20), (16 / 256, 2448 / 256, 240 / 256, 2672 / 256)),
    ],
)
def test_source_box_is_the_crop_mapped_back_onto_the_source(size, box):
    assert source_box(*size, SPEC) == pytest.approx(box)


@pytest.mark.parametrize("fixture", ["cat_jpeg", "coffee_jpeg", "coffee_png"])
def test_real_photos_crop_as_resize_then_crop_did(fixture, request):
    # The definition, the long way: the whole image resized, then the centre cut out. One resize
    # of the source box reads the same pixels with the same weights; only the last bit of the
    # fixed-point rounding may differ (measured: max abs difference 1, mean 0.002 on Chelsea).
    data = request.getfixturevalue(fixture)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (SPEC.resize, SPEC.resize))
    diff = np.abs(decode_and_crop(data, SPEC).astype(int) - reference_crop(img, SPEC))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_default_model_answers_the_same_top1_on_both_paths(cat_jpeg, coffee_jpeg, coffee_png):
    loaded = load_model(ModelConfig(name="efficientnet_lite0"))
    runtime = TorchRuntime(loaded.module, "cpu", "fp32", 1)
    photos = (cat_jpeg, coffee_jpeg, coffee_png)
    new = [decode_and_crop(p, loaded.preprocess) for p in photos]
    old = []
    for p in photos:
        img = Image.open(io.BytesIO(p))
        img.draft("RGB", (loaded.preprocess.resize, loaded.preprocess.resize))
        old.append(reference_crop(img, loaded.preprocess))
    new_top1 = runtime.run(normalize_batch(new, loaded.preprocess)).argmax(axis=1)
    old_top1 = runtime.run(normalize_batch(old, loaded.preprocess)).argmax(axis=1)
    assert new_top1.tolist() == old_top1.tolist()


def test_exif_orientation_turns_the_crop_upright(cat_jpeg):
    cat = Image.open(io.BytesIO(cat_jpeg)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90 degrees anticlockwise: shown after turning 270
    crop = decode_and_crop(jpeg_with_exif(cat, exif.tobytes()), SPEC)
    as_stored = decode_and_crop(saved(cat, "JPEG", quality=92), SPEC)
    assert np.array_equal(crop, upright(as_stored, 6))
    assert not np.array_equal(crop, as_stored)


def test_a_format_off_the_list_is_415_naming_the_list():
    with pytest.raises(UnsupportedMediaType) as err:
        decode_and_crop(saved(Image.new("RGB", (8, 8)), "ICO"), SPEC)
    assert ACCEPTED_FORMATS == ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    assert "JPEG, PNG, GIF, WebP, BMP, TIFF" in err.value.message


def test_jpeg_scans_counts_the_image_not_its_exif_thumbnail(cat_jpeg):
    cat = Image.open(io.BytesIO(cat_jpeg))
    thumbnail = saved(cat.resize((64, 43)), "JPEG")  # has its own start-of-scan marker
    assert jpeg_scans(jpeg_with_exif(cat, b"Exif\x00\x00" + thumbnail)) == 1
    assert jpeg_scans(saved(cat, "JPEG", progressive=True)) == 2  # counting stops at 2


def test_jpeg_scans_counts_thousands_of_scans_but_stops_at_enough():
    many = jpeg_with_scans(Image.new("RGB", (64, 64), (90, 40, 160)), 3000)
    assert jpeg_scans(many, enough=10_000) == 3000
    assert jpeg_scans(many, enough=65) == 65


def test_a_jpeg_over_the_scan_limit_is_refused_from_its_markers_before_decoding():
    flat = Image.new("RGB", (256, 256), (90, 40, 160))
    limits = LimitsConfig(max_jpeg_scans=20)
    assert read_header(jpeg_with_scans(flat, 20), SPEC, limits).scans == 20
    crop = decode_and_crop(jpeg_with_scans(flat, 20), SPEC, limits)
    assert np.abs(crop.astype(int) - reference_crop(flat, SPEC)).max() <= 2
    with pytest.raises(UnprocessableEntity) as err:
        read_header(jpeg_with_scans(flat, 21), SPEC, limits)
    assert err.value.status == 422
    assert "more than 20 scans" in err.value.message
    assert "limits.max_jpeg_scans" in err.value.message
