"""Training data from labeled images: a stable, grouped, stratified split, and arrays via the daemon's
own decode + preprocess path.

The split is decided per *group*, and a group is a perceptual hash of the image, so near-duplicate shots
of the same part land on the same side. A group's side is a hash of the group and the seed: an image in
the holdout stays in the holdout as the dataset grows, so the active model (trained on an earlier run's
training side) has never seen the holdout it is compared on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from inspectd.decode import DecodeLimits, decode
from inspectd.infer import Inferencer
from inspectd.labels import LABELS, Labeled
from inspectd.records import Box, Decoded, ReadyFile
from inspectd.registry import file_sha256
from inspectd.tiles import View


class NotEnoughLabels(Exception):
    """Too few labeled images of a class to train or evaluate."""


@dataclass(frozen=True)
class Split:
    train: list[Labeled]
    validation: list[Labeled]
    holdout: list[Labeled]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, part in (("train", self.train), ("validation", self.validation), ("holdout", self.holdout)):
            for item in sorted(part, key=lambda i: i.sha256):
                digest.update(f"{name}:{item.sha256}:{item.label}\n".encode())
        return digest.hexdigest()

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {"present": sum(i.label for i in part), "absent": sum(1 - i.label for i in part)}
            for name, part in (
                ("train", self.train),
                ("validation", self.validation),
                ("holdout", self.holdout),
            )
        }


def folder_examples(folder: Path, extensions: Sequence[str]) -> list[Labeled]:
    """``folder/present/*`` and ``folder/absent/*`` as labeled images."""
    out = []
    for label in LABELS:
        sub = folder / label
        if not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.is_file() and not path.is_symlink() and path.name.lower().endswith(tuple(extensions)):
                out.append(Labeled(path, int(label == "present"), file_sha256(path), "folder"))
    return out


def group_key(path: Path) -> str:
    """A difference hash (dHash, 64 bits): near-duplicates of the same part share it."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if image is None:
        return file_sha256(path)
    small = cv2.resize(image, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return "".join("1" if b else "0" for b in bits)


def split(items: list[Labeled], holdout: float, validation: float, seed: int, min_per_class: int) -> Split:
    for label, name in ((1, "present"), (0, "absent")):
        count = sum(1 for i in items if i.label == label)
        if count < min_per_class:
            raise NotEnoughLabels(
                f"only {count} labeled '{name}' images (retrain.min_per_class = {min_per_class}); label more "
                "with `inspectd label`, the label folders, or --data FOLDER"
            )
    parts: dict[str, list[Labeled]] = {"train": [], "validation": [], "holdout": []}
    for item in items:
        key = hashlib.sha256(f"{seed}:{item.label}:{group_key(item.path)}".encode()).digest()
        u = int.from_bytes(key[:8], "big") / 2**64
        side = "holdout" if u < holdout else "validation" if u < holdout + validation else "train"
        parts[side].append(item)
    result = Split(parts["train"], parts["validation"], parts["holdout"])
    for name, counts in result.counts().items():
        if min(counts.values()) == 0:
            raise NotEnoughLabels(f"the {name} split has no image of one class ({counts}); label more images")
    return result


def decode_item(item: Labeled, view: View, limits: DecodeLimits) -> Decoded | None:
    """One labeled image through the daemon's decode stage (None when it cannot be used)."""
    out = decode(ReadyFile(item.path, 0.0, datetime.now(UTC)), limits, view)
    return out if isinstance(out, Decoded) else None


def load(
    items: Sequence[Labeled], view: View, limits: DecodeLimits, workers: int = 4
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_], list[Labeled]]:
    """Whole-frame inputs (one per image), exactly as the daemon makes them; unreadable ones are left out."""
    if view.tile is not None:
        raise ValueError("load() gives one input per image; tiled views go through inspectd.train.tiled")
    kept = list(decoded_items(items, view, limits, 64, workers))
    size = view.input_size
    x = np.stack([d.tiles[0] for d, _ in kept]) if kept else np.zeros((0, *size, 1), np.float32)
    y = np.array([item.label for _, item in kept], dtype=np.int_)
    return x, y, [item for _, item in kept]


def decoded_items(
    items: Sequence[Labeled], view: View, limits: DecodeLimits, chunk: int = 16, workers: int = 4
) -> Iterator[tuple[Decoded, Labeled]]:
    """Labeled images through the daemon's decode stage, in order, decoded a chunk at a time in a thread
    pool, so that tiled frames never all sit in memory; unusable images are left out."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            for decoded, item in zip(
                pool.map(lambda i: decode_item(i, view, limits), part), part, strict=True
            ):
                if decoded is not None:
                    yield decoded, item


def score_frames(
    inferencer: Inferencer, items: Sequence[Labeled], limits: DecodeLimits, view: View, reduce: str = "max"
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_], list[Labeled], list[Box | None]]:
    """Per-frame scores from a registry version, decided as the daemon decides (tiles and all)."""
    scores: list[float] = []
    kept: list[Labeled] = []
    boxes: list[Box | None] = []
    batch: list[tuple[Decoded, Labeled]] = []
    for pair in chain(decoded_items(items, view, limits), [None]):  # None: flush the last batch
        if pair is not None:
            batch.append(pair)
        if batch and (pair is None or len(batch) == 16):
            for scored, (_, item) in zip(
                inferencer.classify([d for d, _ in batch], reduce=reduce), batch, strict=True
            ):
                scores.append(scored.score)
                kept.append(item)
                boxes.append(scored.box)
            batch = []
    y = np.array([item.label for item in kept], dtype=np.int_)
    return np.array(scores, np.float32), y, kept, boxes
