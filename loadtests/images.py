"""A small set of real photos, encoded once as JPEG, with the ImageNet classes each one shows."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Long side of the re-encoded photos: the size a phone or web client typically uploads after
# its own downscaling, so the service decodes and resizes as it would in production.
DEFAULT_LONG_SIDE = 640
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SamplePhoto:
    """One photo: its JPEG bytes and the ImageNet class ids a correct answer may have."""

    name: str
    jpeg: bytes
    width: int
    height: int
    # The first id is the label sent as feedback when the prediction is none of the plausible ones.
    class_ids: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def primary_class_id(self) -> int:
        """The class id to report as ground truth when no better one is known."""
        return self.class_ids[0]

    def feedback_label(self, predicted_class_id: int | None) -> int:
        """Ground truth for feedback: the prediction when it is one of this photo's classes, else
        the primary."""
        # A cat photo is legitimately both "tabby" and "tiger cat"; crediting either is the
        # usual multi-label reading of ImageNet, and never credits a wrong answer.
        if predicted_class_id in self.class_ids:
            return predicted_class_id
        return self.primary_class_id


# file in skimage/data -> (ImageNet class ids, their names); ids index the standard 1000-class list.
PHOTO_CLASSES: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "chelsea.png": ((281, 282, 285), ("tabby", "tiger cat", "Egyptian cat")),
    "coffee.png": ((967, 968), ("espresso", "cup")),
    "rocket.jpg": ((657, 744), ("missile", "projectile")),
    "motorcycle_left.png": ((665, 670), ("moped", "motor scooter")),
}


def skimage_data_dir() -> Path:
    """The folder where scikit-image ships its sample photos."""
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - scikit-image is a declared dependency
        raise RuntimeError(
            "scikit-image is needed for the load-test photos: pip install scikit-image"
        ) from exc
    return Path(skimage.data.__file__).parent


def encode_jpeg(
    pixels: np.ndarray, long_side: int = DEFAULT_LONG_SIDE, quality: int = JPEG_QUALITY
) -> bytes:
    """Resize an RGB array so its longer side is `long_side` and encode it as JPEG."""
    image = Image.fromarray(pixels).convert("RGB")
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@functools.lru_cache(maxsize=4)
def load_photos(long_side: int = DEFAULT_LONG_SIDE) -> tuple[SamplePhoto, ...]:
    """Load the bundled photos once per size, encoded as JPEG."""
    if long_side < 32:
        raise ValueError(
            f"long_side={long_side} is too small for a recognizable photo; use 224 or more"
        )
    folder = skimage_data_dir()
    photos = []
    for file_name, (class_ids, labels) in PHOTO_CLASSES.items():
        path = folder / file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; reinstall scikit-image "
                "(pip install --force-reinstall scikit-image)"
            )
        with Image.open(path) as source:
            pixels = np.asarray(source.convert("RGB"))
        jpeg = encode_jpeg(pixels, long_side)
        with Image.open(io.BytesIO(jpeg)) as encoded:
            width, height = encoded.size
        photos.append(SamplePhoto(Path(file_name).stem, jpeg, width, height, class_ids, labels))
    return tuple(photos)
