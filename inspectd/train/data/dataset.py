"""Training data from labeled images: a stable, grouped, stratified split, and arrays via the daemon's
own decode + preprocess path.

The split is decided per *group*: images whose perceptual hashes (dHash, imagehash) lie within a few bits
of each other, so near-duplicate shots of the same part land on the same side. A group's side is a hash of
the group and the seed: an image in the holdout stays in the holdout as the dataset grows (unless a new
image comes first in a group it then joins), so the active model (trained on an earlier run's training
side) has not seen the holdout it is compared on. The holdout's list is kept with each version
(holdout.csv).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from inspectd.core import logs
from inspectd.core.config import Config, TileReduce
from inspectd.core.records import Box, Decoded, ReadyFile
from inspectd.core.registry import file_sha256
from inspectd.core.tiles import View
from inspectd.daemon.intake.decode import DecodeLimits, decode
from inspectd.model.runtime import Inferencer
from inspectd.ops import labels
from inspectd.ops.labels import LABELS, Labeled
from inspectd.train.progress import progress


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


GROUP_RADIUS = 10  # dHash bits: a re-shot shifted by 2 px differs in 2-7 of 64, another image in 20-28


def dhash(path: Path, max_pixels: int) -> int | None:
    """The image's difference hash (64 bits, imagehash), or None when it cannot be read or its header
    declares more than ``max_pixels`` (``[decode] max_pixels``: the decode stage refuses it too; Pillow's
    own bomb limit is off in this process, decode.py, so without this check a decompression bomb
    would be decoded here in full: 20 GB for a 100,000-pixel square)."""
    import imagehash
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                return None
            return int(str(imagehash.dhash(image.convert("L"))), 16)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def groups(items: Sequence[Labeled], max_pixels: int, radius: int = GROUP_RADIUS) -> list[str]:
    """A group per item: near-duplicates (dHash within ``radius`` bits of a group's first image) share one,
    so re-shots of the same part land on the same side of the split. Images are taken in the order of
    their content hash, each joining the nearest group whose first image is within the radius (no
    chains: a group spans at most twice the radius). Unreadable images are groups of their own."""
    hashes = [dhash(item.path, max_pixels) for item in items]
    leaders: list[int] = []  # dHash of each group's first image
    out = [""] * len(items)
    for i in sorted(range(len(items)), key=lambda i: items[i].sha256):
        value = hashes[i]
        if value is None:
            out[i] = items[i].sha256
            continue
        if leaders:
            distance = np.bitwise_count(np.array(leaders, np.uint64) ^ np.uint64(value))
            nearest = int(np.argmin(distance))
            if int(distance[nearest]) <= radius:
                out[i] = f"{leaders[nearest]:016x}"
                continue
        leaders.append(value)
        out[i] = f"{value:016x}"
    return out


def split(
    items: list[Labeled], holdout: float, validation: float, seed: int, min_per_class: int, max_pixels: int
) -> Split:
    """Train / validation / holdout, stratified by label and grouped by near-duplicates (``groups``;
    ``max_pixels``: images whose header declares more are not hashed, the decode stage refuses them)."""
    for label, name in ((1, "present"), (0, "absent")):
        count = sum(1 for i in items if i.label == label)
        if count < min_per_class:
            raise NotEnoughLabels(
                f"only {count} labeled '{name}' images (retrain.min_per_class = {min_per_class}); label more "
                "with `inspectd label`, the label folders, or --data FOLDER"
            )
    parts: dict[str, list[Labeled]] = {"train": [], "validation": [], "holdout": []}
    for item, group in zip(items, groups(items, max_pixels), strict=True):
        key = hashlib.sha256(f"{seed}:{item.label}:{group}".encode()).digest()
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
        raise ValueError("load() gives one input per image; tiled views go through inspectd.train.fit.tiled")
    kept = list(progress(decoded_items(items, view, limits, 64, workers), "decoding", len(items)))
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
    inferencer: Inferencer,
    items: Sequence[Labeled],
    limits: DecodeLimits,
    view: View,
    reduce: TileReduce = "max",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_], list[Labeled], list[Box | None]]:
    """Per-frame scores from a registry version, decided as the daemon decides (tiles and all)."""
    scores: list[float] = []
    kept: list[Labeled] = []
    boxes: list[Box | None] = []
    batch: list[tuple[Decoded, Labeled]] = []
    frames = progress(decoded_items(items, view, limits), "scoring", len(items))
    for pair in chain(frames, [None]):  # None: flush the last batch
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


def gather(engine: Engine, cfg: Config, data: Path | None) -> list[Labeled]:
    """Every labeled image: the label folders (synced first), the labeled results and examples in the
    database, and ``data/present``, ``data/absent`` (one item per content)."""
    sync = labels.sync_folders(engine, cfg.paths.labels, cfg.watch.extensions, by="label-folder")
    logs.get("inspectd.retrain").info(
        "labels.synced",
        linked=sync.linked,
        added=sync.added,
        relabeled=sync.relabeled,
        skipped=len(sync.skipped),
    )
    items = {i.sha256: i for i in labels.labeled_examples(engine)}
    if data is not None:
        for item in folder_examples(data, cfg.watch.extensions):
            items.setdefault(item.sha256, item)
    return list(items.values())
