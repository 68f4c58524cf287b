"""Bytes to pixels, the fastest well-kept decoder for the format, the same pixels as OpenCV.

Grayscale PNGs (what line cameras write: colour type 0, 8 or 16 bits, no transparency chunk) within the
pixel limit go to png.py, which checks the file's structure: a plain one whose rows use the None, Sub and
Up filters it rebuilds itself (libdeflate's inflate and a delta decode: under half of libpng's time on
``make bench``'s frames); a plain one with Average or Paeth rows, or interlaced, goes to imagecodecs' PNG
decoder (libpng; 3-7 % less CPU than ``cv2.imdecode`` here, libspng was slower). Everything else, and
anything libpng refuses, goes to ``cv2.imdecode(IMREAD_UNCHANGED)``, so every refusal (corrupt,
truncated, damaged after the image data, too many pixels) is OpenCV's as before. A first look reads the
PNG header only (``fast_png``, a pure function); tests/test_pixels.py proves the output identical to
OpenCV's on a corpus of PNG kinds and on damaged files.
"""

from __future__ import annotations

import struct

import cv2
import imagecodecs
import numpy as np
import numpy.typing as npt

from inspectd.daemon.intake import png

GRAY = 0  # PNG colour type: grayscale, no alpha, no palette


def fast_png(content: bytes, max_pixels: int) -> bool:
    """From the header: a grayscale 8- or 16-bit PNG without a tRNS chunk, within ``max_pixels``: png.py
    and libpng give it exactly OpenCV's pixels (no colour conversion either way), once png.py has checked
    its structure (an IEND last among it: OpenCV refuses a file cut before it, libpng would not)."""
    if len(content) < 33 or content[:8] != png.SIGNATURE or content[12:16] != b"IHDR":
        return False
    width, height, depth, colour = struct.unpack(">IIBB", content[16:26])
    if colour != GRAY or depth not in (8, 16) or width * height > max_pixels or width * height == 0:
        return False
    idat = content.find(b"IDAT", 33)
    return idat != -1 and b"tRNS" not in content[33:idat]


def decode_pixels(content: bytes, max_pixels: int) -> npt.NDArray[np.generic] | None:
    """The image as OpenCV's IMREAD_UNCHANGED gives it; None when it is not decodable; cv2.error when
    its header declares more pixels than the limit (install_pixel_limit)."""
    if fast_png(content, max_pixels):
        rebuilt = png.decode(content)
        if isinstance(rebuilt, np.ndarray):
            return rebuilt
        if rebuilt == png.LIBPNG:  # a plain file, with rows only libpng unfilters
            try:
                image: npt.NDArray[np.generic] = imagecodecs.png_decode(content)
            except (imagecodecs.PngError, ValueError, RuntimeError):
                pass  # OpenCV decides (it may read what libpng's strict mode refused, or refuse it too)
            else:
                if image.ndim == 2:
                    return image
    return cv2.imdecode(np.frombuffer(content, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
