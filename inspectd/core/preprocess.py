"""The one preprocessing function: used by the daemon, by training, by evaluation. Never copy it.

Any decoded image (8- or 16-bit, grayscale, BGR or BGRA) becomes a float32 (H, W, 1) tensor in [0, 1]
at the model's input size. Normalisation beyond [0, 1] lives inside the model itself.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

SUPPORTED_DTYPES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class UnsupportedImage(ValueError):
    """The decoded array has a layout or depth the model cannot take."""


def to_gray(image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise UnsupportedImage(f"unsupported channel layout {image.shape}")


def preprocess(image: npt.NDArray[Any], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Decoded image -> (height, width, 1) float32 in [0, 1]; ``size`` is (height, width)."""
    scale = SUPPORTED_DTYPES.get(image.dtype)
    if scale is None:
        raise UnsupportedImage(f"unsupported pixel type {image.dtype}")
    gray = to_gray(image)
    height, width = size
    if gray.shape != (height, width):
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
    out = gray.astype(np.float32)
    out *= 1.0 / scale
    return out[:, :, np.newaxis]
