"""Synthetic microchip-like images, with or without a registration mark, for training, tests and benchmarks.

Each image has a die texture (grain, faint cell grid), bond pads along the edges, Manhattan-routed
traces, lighting gradients and vignetting, sensor noise and sometimes blur, and look-alike distractors
(plain rings, plain crosses, boxed X shapes, corner brackets). The symbol is a registration mark: a ring
with a crosshair that runs past it, at any angle, bright or dark.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from inspectd.core.records import Verdict

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class SynthSpec:
    width: int = 640
    height: int = 512
    present_ratio: float = 0.5
    mark_min: int = 48  # registration-mark diameter range in pixels
    mark_max: int = 110
    distractors: tuple[int, int] = (1, 4)
    angle_deg: tuple[float, float] = (0.0, 90.0)  # crosshair angle range of the mark
    background: tuple[float, float] = (70.0, 140.0)  # die base gray level range


@dataclass(frozen=True, slots=True)
class Sample:
    image: Image
    present: bool
    box: tuple[int, int, int, int] | None  # x, y, w, h of the mark when present


def _texture(rng: np.random.Generator, spec: SynthSpec) -> npt.NDArray[np.float32]:
    h, w = spec.height, spec.width
    base = rng.uniform(*spec.background)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.8, 2.0))
    img = base + grain * rng.uniform(4, 10)
    pitch = int(rng.integers(24, 64))
    grid = np.zeros((h, w), np.float32)
    grid[::pitch, :] = 1.0
    grid[:, ::pitch] = 1.0
    img += grid * rng.uniform(-8, 8)
    return img.astype(np.float32)


def _pads(img: npt.NDArray[np.float32], rng: np.random.Generator) -> None:
    h, w = img.shape
    level = float(rng.uniform(170, 235))
    pw, ph = int(rng.integers(14, 26)), int(rng.integers(20, 36))
    step = pw + int(rng.integers(8, 20))
    for x in range(int(rng.integers(10, 30)), w - pw - 10, step):
        cv2.rectangle(img, (x, 6), (x + pw, 6 + ph), level, -1)
        cv2.rectangle(img, (x, h - 6 - ph), (x + pw, h - 6), level, -1)
    for y in range(int(rng.integers(50, 70)), h - ph - 50, step):
        cv2.rectangle(img, (6, y), (6 + ph, y + pw), level, -1)
        cv2.rectangle(img, (w - 6 - ph, y), (w - 6, y + pw), level, -1)


def _traces(img: npt.NDArray[np.float32], rng: np.random.Generator) -> None:
    h, w = img.shape
    for _ in range(int(rng.integers(6, 18))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        level = float(rng.uniform(30, 220))
        width = int(rng.integers(2, 7))
        for _ in range(int(rng.integers(2, 6))):
            if rng.random() < 0.5:
                nx, ny = int(np.clip(x + rng.integers(-250, 250), 0, w - 1)), y
            else:
                nx, ny = x, int(np.clip(y + rng.integers(-200, 200), 0, h - 1))
            cv2.line(img, (x, y), (nx, ny), level, width, cv2.LINE_AA)
            x, y = nx, ny


def _rotated(cx: float, cy: float, r: float, angle: float) -> tuple[tuple[int, int], tuple[int, int]]:
    dx, dy = r * math.cos(angle), r * math.sin(angle)
    return (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy))


def _mark(
    img: npt.NDArray[np.float32], cx: float, cy: float, d: float, angle: float, level: float, thick: int
) -> None:
    """The registration mark: a ring and a crosshair that runs past it."""
    cv2.circle(img, (round(cx), round(cy)), round(d / 2 * 0.72), level, thick, cv2.LINE_AA)
    for a in (angle, angle + math.pi / 2):
        p, q = _rotated(cx, cy, d / 2, a)
        cv2.line(img, p, q, level, thick, cv2.LINE_AA)


def _distractor(
    img: npt.NDArray[np.float32],
    rng: np.random.Generator,
    cx: float,
    cy: float,
    d: float,
    level: float,
    thick: int,
) -> None:
    kind = int(rng.integers(0, 5))
    angle = float(rng.uniform(0, math.pi))
    if kind == 0:  # a plain ring
        cv2.circle(img, (round(cx), round(cy)), round(d / 2 * 0.72), level, thick, cv2.LINE_AA)
    elif kind == 1:  # a plain crosshair without its ring
        for a in (angle, angle + math.pi / 2):
            p, q = _rotated(cx, cy, d / 2, a)
            cv2.line(img, p, q, level, thick, cv2.LINE_AA)
    elif kind == 2:  # an X inside a box
        s = round(d / 2 * 0.7)
        cv2.rectangle(img, (round(cx) - s, round(cy) - s), (round(cx) + s, round(cy) + s), level, thick)
        cv2.line(
            img, (round(cx) - s, round(cy) - s), (round(cx) + s, round(cy) + s), level, thick, cv2.LINE_AA
        )
        cv2.line(
            img, (round(cx) - s, round(cy) + s), (round(cx) + s, round(cy) - s), level, thick, cv2.LINE_AA
        )
    elif kind == 3:  # a corner bracket
        s = round(d / 2)
        cv2.line(img, (round(cx) - s, round(cy) - s), (round(cx) + s, round(cy) - s), level, thick)
        cv2.line(img, (round(cx) - s, round(cy) - s), (round(cx) - s, round(cy) + s), level, thick)
    else:  # a filled disc (a via or a solder ball)
        cv2.circle(img, (round(cx), round(cy)), round(d / 3), level, -1, cv2.LINE_AA)


def generate(rng: np.random.Generator, spec: SynthSpec, present: bool | None = None) -> Sample:
    if present is None:
        present = bool(rng.random() < spec.present_ratio)
    img = _texture(rng, spec)
    _pads(img, rng)
    _traces(img, rng)
    h, w = img.shape
    background = float(np.median(img))

    def spot(d: float) -> tuple[float, float]:
        margin = d / 2 + 4
        return float(rng.uniform(margin, w - margin)), float(rng.uniform(margin, h - margin))

    def contrast() -> float:
        delta = float(rng.uniform(50, 110)) * (1 if rng.random() < 0.7 else -1)
        return float(np.clip(background + delta, 0, 255))

    for _ in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        d = float(rng.uniform(spec.mark_min, spec.mark_max))
        _distractor(img, rng, *spot(d), d, contrast(), int(rng.integers(2, 5)))
    box = None
    if present:
        d = float(rng.uniform(spec.mark_min, spec.mark_max))
        cx, cy = spot(d)
        angle = math.radians(float(rng.uniform(*spec.angle_deg)))
        _mark(img, cx, cy, d, angle, contrast(), int(rng.integers(2, 5)))
        box = (round(cx - d / 2), round(cy - d / 2), round(d), round(d))
    # lighting: a linear gradient and vignetting, then sensor noise and sometimes defocus
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    light = 1.0 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2
    light *= 1.0 - rng.uniform(0, 0.35) * r2
    img = img * light * rng.uniform(0.8, 1.2)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.6))
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return Sample(np.clip(img, 0, 255).astype(np.uint8), present, box)


def stream(seed: int, spec: SynthSpec) -> Iterator[Sample]:
    rng = np.random.default_rng(seed)
    while True:
        yield generate(rng, spec)


def write_dataset(
    out: Path, count: int, seed: int, spec: SynthSpec, fmt: str = "png", flat: bool = False
) -> Path:
    """Write ``count`` images and a labels.csv (file, label, x, y, w, h); returns the CSV's path.

    With ``flat`` every image lands in ``out``; otherwise in ``out/present`` and ``out/absent``.
    """
    out.mkdir(parents=True, exist_ok=True)
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "x", "y", "w", "h"])
        for i, sample in zip(range(count), stream(seed, spec), strict=False):
            label = (Verdict.PRESENT if sample.present else Verdict.ABSENT).value
            folder = out if flat else out / label
            folder.mkdir(exist_ok=True)
            name = f"synth-{seed}-{i:06d}.{fmt}"
            if not cv2.imwrite(str(folder / name), sample.image):
                raise OSError(f"cannot write {folder / name}")
            x, y, bw, bh = sample.box or ("", "", "", "")
            writer.writerow([str((folder / name).relative_to(out)), label, x, y, bw, bh])
    return labels
