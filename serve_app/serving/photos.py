"""Real photos that ship inside installed packages, and crops of them, for calibration and checks.

Nothing is downloaded: the files are read from scikit-image's `skimage/data` folder and
matplotlib's `sample_data` (both pinned in pyproject.toml). The photos are split once into a
calibration set and an evaluation set with no photo in both, so an INT8 model is never scored on
the pictures it was calibrated on. The stereo pair of the motorcycle (two views of one scene) stays
on one side for the same reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from serve_app.config import PreprocessSpec
from serve_app.serving.imaging import resize_and_crop

# (package, file): photos of scenes ImageNet has classes for, and textures and microscopy, which
# widen the activation ranges calibration sees.
CALIBRATION_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "rocket.jpg"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "ihc.png"),
    ("skimage", "retina.jpg"),
    ("skimage", "brick.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "coins.png"),
    ("skimage", "moon.png"),
    ("skimage", "cell.png"),
)
EVALUATION_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "camera.png"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "motorcycle_right.png"),
    ("matplotlib", "grace_hopper.jpg"),
    ("matplotlib", "Minduka_Present_Blue_Pack.png"),
    # Grey camera photos of everyday objects. Left out of both sets: the page scan, the synthetic
    # images, the 102-pixel fundus crop and the 25-pixel faces that also ship there.
    ("skimage", "clock_motion.png"),
    ("skimage", "text.png"),
)


# The smallest share of the photo a crop keeps: below about a quarter a crop of a street scene is
# a patch of asphalt, which no model can be judged on.
MIN_AREA = 0.25


def photo_path(package: str, name: str) -> Path:
    """Where an installed package keeps one of its sample photos."""
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent / name
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    raise ValueError(f"no sample photos known in package {package!r}")


def load_photo(package: str, name: str) -> Image.Image:
    """One shipped photo as an RGB image (grey photos are repeated on three channels)."""
    with Image.open(photo_path(package, name)) as img:
        return img.convert("RGB")


def _rng(name: str, index: int, salt: str) -> np.random.Generator:
    seed = hashlib.sha256(f"{salt}:{name}:{index}".encode()).digest()[:8]
    return np.random.default_rng(int.from_bytes(seed, "little"))


def variant(photo: Image.Image, rng: np.random.Generator, spec: PreprocessSpec) -> np.ndarray:
    """A random crop (25-100 % of the area, aspect 3:4..4:3), sometimes mirrored, then the model's
    own resize and centre crop: what a client's framing of the same scene may look like."""
    width, height = photo.size
    area = width * height * rng.uniform(MIN_AREA, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = int(min(width, max(16, round(np.sqrt(area * aspect)))))
    h = int(min(height, max(16, round(np.sqrt(area / aspect)))))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    crop = photo.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return resize_and_crop(crop, spec)


def photo_set(
    photos: tuple[tuple[str, str], ...], per_photo: int, spec: PreprocessSpec, salt: str
) -> list[np.ndarray]:
    """`per_photo` uint8 crops of each photo: the whole photo first, then seeded random variants,
    the same on every run."""
    crops = []
    for package, name in photos:
        photo = load_photo(package, name)
        crops.append(resize_and_crop(photo, spec))
        crops.extend(variant(photo, _rng(name, i, salt), spec) for i in range(1, per_photo))
    return crops


def calibration_crops(spec: PreprocessSpec, per_photo: int = 8) -> list[np.ndarray]:
    """Crops of the calibration photos only."""
    return photo_set(CALIBRATION_PHOTOS, per_photo, spec, salt="calibration")


def evaluation_crops(spec: PreprocessSpec, per_photo: int = 40) -> list[np.ndarray]:
    """Crops of the evaluation photos only (none of them is a calibration photo)."""
    return photo_set(EVALUATION_PHOTOS, per_photo, spec, salt="evaluation")
