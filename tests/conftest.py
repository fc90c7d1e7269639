"""Shared test data: real photos shipped with scikit-image, encoded as users send them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

# ImageNet class ids (torchvision order) that correctly describe the bundled photos.
CAT_CLASSES = {
    281,
    282,
    283,
    284,
    285,
    286,
    287,
}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx
ESPRESSO = 967


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(
        buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kwargs
    )
    return buf.getvalue()


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    from skimage import data

    return encode(data.chelsea())


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    from skimage import data

    return encode(data.coffee())


@pytest.fixture(scope="session")
def coffee_png() -> bytes:
    from skimage import data

    return encode(data.coffee(), "PNG")
