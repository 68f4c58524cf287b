"""Training a MIL head with places: each frame a bag of places (the cells of its logit map), and where the
mark is known (a composited mark, a box a human drew) which places hold it.

The loss of a frame has up to two terms, both binary cross-entropy on a maximum:
- the places that may hold the mark (the whole frame when it is a present frame without a box, the cells
  over the box when there is one): their highest logit should be high;
- the places that cannot (the whole of an absent frame, what lies well away from the box): their highest
  logit should be low. The loss falls on the hardest of them: every epoch mines each frame's hardest
  negative place, look-alike marks above all.
Cells near a box's edge see part of the mark and belong to neither.

Each start of the head begins with a few epochs of ``place_loss``, in which every place takes its bag's
target (a present frame's every place is "present"): all places get a gradient, not only the highest, so
the head learns what present frames have and absent frames lack before the maximum decides which place
counts. Started at random, the maximum can lock on to background texture and never find a hard mark
(the X of bench-quality stayed at chance in two starts out of three).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core.records import Box

INSIDE, OUTSIDE = 0, 1  # channels of a bag target


def bag_targets(
    labels: npt.NDArray[np.int_], boxes: Sequence[Box | None], grid: tuple[int, int], stride: float
) -> npt.NDArray[np.float32]:
    """(N, H, W, 2) masks over the logit map: INSIDE the places that may hold the mark, OUTSIDE those
    that cannot. ``stride``: input pixels per place; a box is (x, y, w, h) in input pixels."""
    height, width = grid
    out = np.zeros((len(labels), height, width, 2), np.float32)
    centres_y = (np.arange(height) + 0.5) * stride
    centres_x = (np.arange(width) + 0.5) * stride
    for i, (label, box) in enumerate(zip(labels, boxes, strict=True)):
        if not label:
            out[i, :, :, OUTSIDE] = 1.0
        elif box is None:
            out[i, :, :, INSIDE] = 1.0
        else:
            x, y, w, h = box
            inside_y = (centres_y >= y) & (centres_y < y + h)
            inside_x = (centres_x >= x) & (centres_x < x + w)
            out[i, :, :, INSIDE] = np.outer(inside_y, inside_x)
            cy = min(height - 1, int((y + h / 2) / stride))
            cx = min(width - 1, int((x + w / 2) / stride))
            out[i, cy, cx, INSIDE] = 1.0  # a mark smaller than a place: the place of its centre
            margin = max(2 * stride, 0.5 * max(w, h))  # what a place near the mark still sees of it
            near_y = (centres_y >= y - margin) & (centres_y < y + h + margin)
            near_x = (centres_x >= x - margin) & (centres_x < x + w + margin)
            out[i, :, :, OUTSIDE] = 1.0 - np.outer(near_y, near_x)
    return out


def bag_loss(targets: Any, logit_map: Any) -> Any:
    """Per-frame loss for (N, H, W, 2) targets and an (N, H, W, 1) logit map (TensorFlow tensors)."""
    from inspectd.train.tf import tensorflow

    tf = tensorflow()
    z = logit_map[..., 0]
    inside, outside = targets[..., INSIDE], targets[..., OUTSIDE]
    very_low = tf.constant(-1e4, z.dtype)
    top_in = tf.reduce_max(tf.where(inside > 0, z, very_low), axis=[1, 2])
    top_out = tf.reduce_max(tf.where(outside > 0, z, very_low), axis=[1, 2])
    has_in = tf.reduce_max(inside, axis=[1, 2])
    has_out = tf.reduce_max(outside, axis=[1, 2])
    # BCE with logits: target 1 -> softplus(-z), target 0 -> softplus(z)
    return has_in * tf.nn.softplus(-top_in) + has_out * tf.nn.softplus(top_out)


def place_loss(targets: Any, logit_map: Any) -> Any:
    """The warm-up loss: binary cross-entropy of every place against its bag's target (INSIDE: 1,
    OUTSIDE: 0, a place in neither left out), averaged over the frame's places that have one."""
    from inspectd.train.tf import tensorflow

    tf = tensorflow()
    z = logit_map[..., 0]
    inside, outside = targets[..., INSIDE], targets[..., OUTSIDE]
    per_place = inside * tf.nn.softplus(-z) + outside * tf.nn.softplus(z)
    counted = tf.maximum(tf.reduce_sum(inside + outside, axis=[1, 2]), 1.0)
    return tf.reduce_sum(per_place, axis=[1, 2]) / counted


def frame_weights(labels: npt.NDArray[np.int_]) -> npt.NDArray[np.float32]:
    """Per-frame weights that give both classes the same total weight."""
    n, positives = len(labels), int(labels.sum())
    if positives in (0, n):
        return np.ones(n, np.float32)
    return np.where(labels == 1, n / (2 * positives), n / (2 * (n - positives))).astype(np.float32)
