"""Labeled image sets that inspectd's own generator did not draw: real photographs and micrographs that
packages ship, with symbols rendered from real font glyphs (and a few drawn primitives) on them.

Each set is a maintainer's folder: ``ROOT/<symbol>/train/{present,absent}/*.png`` for ``inspectd retrain
--data``, ``ROOT/<symbol>/test/{present,absent}/*.png`` for ``inspectd eval --data``, and
``ROOT/<symbol>/manifest.csv`` saying what each image is made of (its background, the symbol or the
look-alikes on it, their fonts, boxes, contrast).

Train and test come from disjoint material: the background images are split into two groups by a fixed
seed (within each source package, so both sides get photographs and micrographs), and so are the fonts,
by *lineage* (a design and its clones stay on one side: URW's base 35, TeX Gyre and GNU FreeFont are one
lineage, Liberation and Croscore's Arimo/Tinos/Cousine another). Validation is whatever ``inspectd
retrain`` carves out of the train folder.

Material (only what is on the machine, nothing downloaded at run time):
- scikit-image's bundled images (``skimage/data/*``, the ones shipped in the wheel, not the pooch ones),
- scikit-learn's two sample photographs, matplotlib's sample photograph, MRI slice and elevation map,
- Debian's ``mate-backgrounds`` photographs (``/usr/share/backgrounds/mate/nature``),
- fonts under ``/usr/share/fonts`` and ``/usr/share/texmf/fonts`` (Debian's fonts-* packages).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib.util
import json
import math
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

GENERATOR_VERSION = 2
Gray = npt.NDArray[np.float32]
Mask = npt.NDArray[np.float32]
MANIFEST = "manifest.csv"
LABELS_CSV = "labels.csv"  # per split folder, as `inspectd synth` writes it: file, label, x, y, w, h
COMPLETE = ".complete"
SPLITS = ("train", "test")

# ---------------------------------------------------------------------------------------------- symbols


@dataclass(frozen=True)
class Symbol:
    """A target symbol and its look-alikes: glyph characters (rendered from every font that has them)
    and drawn primitives (``DRAWN`` below)."""

    name: str
    targets: tuple[str, ...]
    target_drawn: tuple[str, ...]
    lookalikes: tuple[str, ...]
    lookalike_drawn: tuple[str, ...]
    # look-alikes that are the target turned by 45 degrees: turned at most TIGHT_ROTATION, so that no
    # negative is a rotated positive
    tight: frozenset[str] = frozenset()
    avoid_text: bool = False  # leave out backgrounds with printed text (letters that are look-alikes)


def _chars(codes: str) -> tuple[str, ...]:
    return tuple(chr(int(c, 16)) for c in codes.split())


SYMBOLS: dict[str, Symbol] = {
    "circled_plus": Symbol(
        name="circled_plus",
        targets=_chars("2295 2A01"),  # circled plus, n-ary circled plus
        target_drawn=("circle_cross",),
        # circled times, dot, ring, large circle, plus, circled minus, O with stroke (both cases), position
        # indicator, circled slash, Phi, Theta, bullseye, circled asterisk, circled ring, squared plus,
        # squared times, n-ary circled times
        lookalikes=_chars(
            "2297 2299 25CB 25EF 002B 2296 00D8 00F8 2316 2298 03A6 0398 25CE 229B 229A 229E 22A0 2A02"
        ),
        lookalike_drawn=(
            "circle",
            "circle_dot",
            "circle_x",
            "circle_bar",
            "circle_vbar",
            "circle_slash",
            "cross",
            "crosshair",
            "double_circle",
        ),
        tight=frozenset({*_chars("2297 22A0 2A02"), "circle_x"}),
    ),
    "x_mark": Symbol(
        name="x_mark",
        # X, x, multiplication sign, multiplication X, heavy multiplication X, box-drawing diagonal cross
        targets=_chars("0058 0078 00D7 2715 2716 2573"),
        target_drawn=("x",),
        # Y, y, K, k, V, v, plus, asterisk, heavy asterisk, eight-spoked asterisk, lambda, Zhe (both
        # cases), dagger, heavy plus
        lookalikes=_chars("0059 0079 004B 006B 0056 0076 002B 002A 2731 2733 03BB 0416 0436 2020 271A"),
        lookalike_drawn=("plus", "y", "v", "k", "asterisk", "lambda"),
        tight=frozenset({*_chars("002B 271A 2020"), "plus"}),
        avoid_text=True,
    ),
}
TIGHT_ROTATION = 10.0


def shape_name(shape: str) -> str:
    """A manifest name: ``U+2295`` for a glyph, ``drawn:circle_cross`` for a drawn primitive."""
    return shape if shape.startswith("drawn:") else f"U+{ord(shape):04X}"


# --------------------------------------------------------------------------------------------- material


@dataclass(frozen=True)
class Background:
    name: str  # source/name
    group: str  # the split unit (a stereo pair is one group)
    path: str
    loader: str = "image"  # image | ima_gz | npz:<key>
    text: bool = False  # shows printed text


@dataclass(frozen=True)
class Font:
    path: str
    lineage: str  # the split unit: a design and its clones
    family: str
    chars: frozenset[str]


@dataclass(frozen=True)
class Material:
    backgrounds: tuple[Background, ...]
    fonts: tuple[Font, ...]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for b in self.backgrounds:
            digest.update(f"b:{b.name}:{b.group}:{Path(b.path).stat().st_size}\n".encode())
        for f in self.fonts:
            digest.update(f"f:{f.path}:{f.lineage}:{Path(f.path).stat().st_size}\n".encode())
        return digest.hexdigest()


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# scikit-image's bundled photographs and micrographs (not the synthetic ones: chessboard, phantom, logo)
SKIMAGE = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
SKIMAGE_GROUPS = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}
TEXT_IMAGES = {"skimage/page", "skimage/text"}
MATE = Path("/usr/share/backgrounds/mate")
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts/opentype"))
# lineage by path fragment, first match wins: clones of one design share a lineage
LINEAGES = (
    ("DejaVuMathTeXGyre", "urw"),
    ("/urw-base35/", "urw"),
    ("/tex-gyre/", "urw"),
    ("/freefont/", "urw"),
    ("/dejavu/", "dejavu"),
    ("/liberation", "liberation"),
    ("/croscore/", "liberation"),
    ("/crosextra/", "carlito"),
    ("/noto/", "noto"),
    ("/roboto/", "roboto"),
    ("/cantarell/", "cantarell"),
    ("/stix", "stix"),
    ("/ancient-scripts/", "symbola"),
)
SKIP_FONT_DIRS = ("/glyphicons/",)
# Noto: the Latin, math and symbol faces (the script faces have none of these characters)
NOTO_KEEP = re.compile(r"^Noto(Sans|Serif)(Mono|Display|Math|Symbols2?)?-")


def find_backgrounds() -> list[Background]:
    out: list[Background] = []
    skimage = _package_dir("skimage")
    if skimage is not None:
        for name, file in SKIMAGE.items():
            path = skimage / "data" / file
            if path.is_file():
                full = f"skimage/{name}"
                group = f"skimage/{SKIMAGE_GROUPS.get(name, name)}"
                out.append(Background(full, group, str(path), text=full in TEXT_IMAGES))
    sklearn = _package_dir("sklearn")
    if sklearn is not None:
        for name in ("china", "flower"):
            path = sklearn / "datasets" / "images" / f"{name}.jpg"
            if path.is_file():
                out.append(Background(f"sklearn/{name}", f"sklearn/{name}", str(path)))
    mpl = _package_dir("matplotlib")
    if mpl is not None:
        sample = mpl / "mpl-data" / "sample_data"
        for name, file, loader in (
            ("grace_hopper", "grace_hopper.jpg", "image"),
            ("mri_s1045", "s1045.ima.gz", "ima_gz"),
            ("jacksboro_dem", "jacksboro_fault_dem.npz", "npz:elevation"),
        ):
            if (sample / file).is_file():
                out.append(Background(f"matplotlib/{name}", f"matplotlib/{name}", str(sample / file), loader))
    photos = sorted((MATE / "nature").glob("*.jpg")) + sorted((MATE / "abstract").glob("Elephants.jpg"))
    for path in photos:
        name = f"mate/{path.stem}"
        out.append(Background(name, name, str(path)))
    return out


def _lineage(path: str) -> str | None:
    if any(s in path for s in SKIP_FONT_DIRS):
        return None
    if "/noto/" in path and not NOTO_KEEP.match(Path(path).name):
        return None
    for fragment, lineage in LINEAGES:
        if fragment in path:
            return lineage
    return Path(path).parent.name


def all_chars() -> frozenset[str]:
    return frozenset(c for s in SYMBOLS.values() for c in (*s.targets, *s.lookalikes))


def find_fonts() -> list[Font]:
    from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

    wanted = all_chars()
    out: list[Font] = []
    seen: set[str] = set()
    for folder in FONT_DIRS:
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf")):
            lineage = _lineage(str(path))
            if lineage is None or path.name in seen:
                continue
            try:
                font = TTFont(str(path), fontNumber=0, lazy=True)
                cmap = font.getBestCmap() or {}
                family = str(font["name"].getDebugName(1))
            except Exception:  # noqa: BLE001 - a font FreeType/fontTools cannot read is not material
                continue
            chars = frozenset(c for c in wanted if ord(c) in cmap)
            if chars:
                seen.add(path.name)
                out.append(Font(str(path), lineage, family, chars))
    return out


@functools.cache
def material() -> Material:
    return Material(tuple(find_backgrounds()), tuple(find_fonts()))


# ------------------------------------------------------------------------------------------------ split


@dataclass(frozen=True)
class SetSpec:
    """Everything that decides a generated set (and its cache key)."""

    train: int = 1200
    train_present: int = 400
    test: int = 600
    test_present: int = 150
    seed: int = 2025
    frame: int = 256
    min_size: float = 18.0  # the symbol's longer side in frame pixels
    max_size: float = 56.0
    max_rotation: float = 25.0
    test_share: float = 1 / 3  # of background groups and font lineages held out for the test side
    glyph_share: float = 0.75  # symbols from fonts; the rest drawn primitives
    symbols: tuple[str, ...] = tuple(SYMBOLS)

    def count(self, split: str) -> tuple[int, int]:
        return (self.train, self.train_present) if split == "train" else (self.test, self.test_present)

    def key(self, mat: Material) -> str:
        blob = json.dumps(
            {"generator": GENERATOR_VERSION, "spec": asdict(self), "material": mat.fingerprint()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sides:
    """Which background groups and font lineages each side uses."""

    backgrounds: dict[str, tuple[Background, ...]]
    fonts: dict[str, tuple[Font, ...]]


def _covers(fonts: Iterable[Font], chars: Iterable[str]) -> set[str]:
    have: set[str] = set()
    for f in fonts:
        have |= f.chars
    return have & set(chars)


def split_material(mat: Material, spec: SetSpec) -> Sides:
    rng = np.random.default_rng([spec.seed, 1])
    by_source: dict[str, list[str]] = {}
    for b in mat.backgrounds:
        groups = by_source.setdefault(b.name.split("/", 1)[0], [])
        if b.group not in groups:
            groups.append(b.group)
    test_groups: set[str] = set()
    for _, groups in sorted(by_source.items()):
        order = [groups[i] for i in rng.permutation(len(groups))]
        if len(order) >= 2:
            test_groups |= set(order[: max(1, round(len(order) * spec.test_share))])
    backgrounds = {
        "train": tuple(b for b in mat.backgrounds if b.group not in test_groups),
        "test": tuple(b for b in mat.backgrounds if b.group in test_groups),
    }

    lineages = sorted({f.lineage for f in mat.fonts})
    n_test = max(1, round(len(lineages) * spec.test_share))
    fonts: dict[str, tuple[Font, ...]] | None = None
    for attempt in range(200):  # the first seeded shuffle that gives both sides every symbol's glyphs
        order = [
            lineages[i] for i in np.random.default_rng([spec.seed, 2, attempt]).permutation(len(lineages))
        ]
        held = set(order[:n_test])
        sides = {
            "train": tuple(f for f in mat.fonts if f.lineage not in held),
            "test": tuple(f for f in mat.fonts if f.lineage in held),
        }
        if all(
            _covers(sides[s], SYMBOLS[name].targets) and len(_covers(sides[s], SYMBOLS[name].lookalikes)) >= 4
            for s in SPLITS
            for name in spec.symbols
        ):
            fonts = sides
            break
    if fonts is None:
        raise RuntimeError("the fonts on this machine cannot be split with every symbol on both sides")
    for s in SPLITS:
        if not backgrounds[s]:
            raise RuntimeError(f"no background images for the {s} side: install the material (Makefile)")
    return Sides(backgrounds, fonts)


# ------------------------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=64)
def load_background(path: str, loader: str, longest: int = 1024) -> Gray:
    """A background image as float32 grayscale in [0, 1], its longer side at most ``longest``."""
    if loader == "ima_gz":
        with gzip.open(path) as fh:
            raw = np.frombuffer(fh.read(), ">u2").reshape(256, 256).astype(np.float32)
    elif loader.startswith("npz:"):
        with np.load(path) as z:
            raw = np.asarray(z[loader.split(":", 1)[1]], np.float32)
    else:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise RuntimeError(f"cannot read {path}")
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        raw = image.astype(np.float32)
    lo, hi = np.percentile(raw, (0.5, 99.5))
    gray = np.clip((raw - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    scale = longest / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray, np.float32)


@functools.lru_cache(maxsize=8192)
def glyph_mask(path: str, char: str, em: int = 160) -> Mask:
    """The glyph's ink, cropped to its bounding box, as float32 in [0, 1] (empty: shape (0, 0))."""
    font = ImageFont.truetype(path, em)
    left, top, right, bottom = (int(v) for v in font.getbbox(char))
    pad = 8
    image = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), char, font=font, fill=255)
    return _crop(np.asarray(image, np.float32) / 255.0)


def _crop(mask: Mask, level: float = 0.02) -> Mask:
    rows = np.flatnonzero(mask.max(axis=1) > level)
    cols = np.flatnonzero(mask.max(axis=0) > level)
    if len(rows) == 0 or len(cols) == 0:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _drawn(name: str, rng: np.random.Generator) -> Mask:
    """A drawn primitive at 240 px, strokes of random weight."""
    n = 240
    c = n // 2
    r = 100
    canvas = np.zeros((n, n), np.uint8)
    t = int(rng.integers(6, 26))  # stroke weight
    t2 = max(3, round(t * float(rng.uniform(0.6, 1.4))))

    def line(a: float, length0: float, length1: float, w: int) -> None:
        dx, dy = math.cos(math.radians(a)), -math.sin(math.radians(a))
        p0 = (round(c + dx * length0), round(c + dy * length0))
        p1 = (round(c + dx * length1), round(c + dy * length1))
        cv2.line(canvas, p0, p1, 255, w, cv2.LINE_AA)

    def circle(radius: float, w: int) -> None:
        cv2.circle(canvas, (c, c), round(radius), 255, w, cv2.LINE_AA)

    inner = r - t / 2
    if name == "circle_cross":
        circle(r - t / 2, t)
        line(0, -inner, inner, t2)
        line(90, -inner, inner, t2)
    elif name == "circle":
        circle(r - t / 2, t)
    elif name == "circle_dot":
        circle(r - t / 2, t)
        cv2.circle(canvas, (c, c), round(r * float(rng.uniform(0.12, 0.3))), 255, -1, cv2.LINE_AA)
    elif name == "circle_x":
        circle(r - t / 2, t)
        line(45, -inner, inner, t2)
        line(135, -inner, inner, t2)
    elif name == "circle_bar":
        circle(r - t / 2, t)
        line(0, -inner, inner, t2)
    elif name == "circle_vbar":
        circle(r - t / 2, t)
        line(90, -inner, inner, t2)
    elif name == "circle_slash":
        circle(r * 0.8, t)
        line(float(rng.uniform(50, 70)), -r, r, t2)
    elif name == "cross":
        line(0, -r, r, t)
        line(90, -r, r, t)
    elif name == "crosshair":  # ⌖: the lines go on past a smaller circle
        circle(r * float(rng.uniform(0.45, 0.7)), t)
        line(0, -r, r, t2)
        line(90, -r, r, t2)
    elif name == "double_circle":
        circle(r - t / 2, t)
        circle(r * float(rng.uniform(0.35, 0.6)), t2)
    elif name == "x":
        half = float(rng.uniform(30, 55))  # the strokes' angle from the vertical
        line(90 - half, -r, r, t)
        line(90 + half, -r, r, t2 if rng.random() < 0.5 else t)
    elif name == "plus":
        line(0, -r, r, t)
        line(90, -r, r, t2)
    elif name == "y":
        half = float(rng.uniform(25, 50))
        line(90 - half, 0, r, t)
        line(90 + half, 0, r, t)
        line(270, 0, r, t2)
    elif name == "v":
        half = float(rng.uniform(18, 35))
        base = (c, c + r)
        for a in (90 - half, 90 + half):
            dx, dy = math.cos(math.radians(a)), -math.sin(math.radians(a))
            end = (round(base[0] + dx * 2 * r), round(base[1] + dy * 2 * r))
            cv2.line(canvas, base, end, 255, t, cv2.LINE_AA)
    elif name == "k":
        stem = c - r // 2
        cv2.line(canvas, (stem, c - r), (stem, c + r), 255, t, cv2.LINE_AA)
        cv2.line(canvas, (stem, c), (c + r // 2, c - r), 255, t2, cv2.LINE_AA)
        cv2.line(canvas, (stem + t // 2, c - t // 2), (c + r // 2, c + r), 255, t2, cv2.LINE_AA)
    elif name == "asterisk":
        start = float(rng.uniform(0, 60))
        for k in range(3):
            line(start + 60 * k, -r, r, t)
    elif name == "lambda":
        line(float(rng.uniform(55, 70)), -r, r, t)
        cv2.line(canvas, (c, c), (c - r // 2, c + r), 255, t2, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown drawn primitive {name}")
    return _crop(canvas.astype(np.float32) / 255.0)


def _render(mask: Mask, longer: float, angle: float) -> Mask:
    """``mask`` scaled so that its longer side is ``longer`` px, then turned by ``angle`` degrees."""
    h, w = mask.shape
    diag = math.ceil(math.hypot(h, w)) + 4
    pad = np.zeros((diag, diag), np.float32)
    y0, x0 = (diag - h) // 2, (diag - w) // 2
    pad[y0 : y0 + h, x0 : x0 + w] = mask
    turned = cv2.warpAffine(
        pad, cv2.getRotationMatrix2D((diag / 2, diag / 2), angle, 1.0), (diag, diag), flags=cv2.INTER_LINEAR
    )
    scale = longer / max(h, w)
    side = max(1, round(diag * scale))
    small = cv2.resize(turned, (side, side), interpolation=cv2.INTER_AREA)
    return _crop(np.clip(small, 0.0, 1.0).astype(np.float32))


# --------------------------------------------------------------------------------------------- a frame


@dataclass
class Placed:
    shape: str  # the character, or drawn:NAME
    font: str  # the font file, or "drawn"
    lineage: str  # the font's lineage, or "drawn"
    box: tuple[int, int, int, int]
    size: float
    angle: float
    polarity: str
    contrast: float
    ink: float  # sum of the mask (pixels of ink)


@dataclass
class Frame:
    image: npt.NDArray[np.uint8]
    background: Background
    crop: str
    target: Placed | None
    lookalikes: list[Placed] = field(default_factory=list)
    blur: float = 0.0
    noise: float = 0.0


def _background(rng: np.random.Generator, bg: Background, frame: int) -> tuple[Gray, str]:
    src = load_background(bg.path, bg.loader)
    h, w = src.shape
    short = min(h, w)
    side = float(rng.uniform(min(short, max(96.0, 0.25 * short)), short))  # crop side in source pixels
    if side > 1.25 * frame:  # shrink first so the warp does not alias
        f = 1.25 * frame / side
        src = np.asarray(cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_AREA), np.float32)
        side *= f
        h, w = src.shape
    angle = float(rng.uniform(-180, 180)) if rng.random() < 0.5 else 90.0 * int(rng.integers(0, 4))
    # the crop's centre such that its axis-aligned extent stays inside (reflection fills what is left)
    cx = float(rng.uniform(min(side / 2, w / 2), max(w - side / 2, w / 2)))
    cy = float(rng.uniform(min(side / 2, h / 2), max(h - side / 2, h / 2)))
    scale = frame / side
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[0, 2] += frame / 2 - cx
    m[1, 2] += frame / 2 - cy
    out = cv2.warpAffine(src, m, (frame, frame), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    flip = ""
    if rng.random() < 0.5:
        out = out[:, ::-1]
        flip += "h"
    if rng.random() < 0.5:
        out = out[::-1, :]
        flip += "v"
    # tone: a random range, a gamma, sometimes inverted
    lo = float(rng.uniform(0.0, 0.35))
    hi = float(rng.uniform(max(lo + 0.25, 0.6), 1.0))
    out = np.power(np.clip(out, 0, 1), float(np.exp(rng.uniform(-0.5, 0.5))))
    if rng.random() < 0.25:
        out = 1.0 - out
    out = lo + (hi - lo) * out
    crop = f"x={cx:.0f} y={cy:.0f} side={side:.0f} angle={angle:.0f} flip={flip or '-'}"
    return np.ascontiguousarray(out, np.float32), crop


def _pick_shape(
    rng: np.random.Generator,
    chars: Sequence[str],
    drawn: Sequence[str],
    fonts: Sequence[Font],
    glyph_share: float,
) -> tuple[str, Font | None]:
    """A glyph from a font (a lineage first, so no foundry's many files dominate) or a drawn primitive."""
    usable = [f for f in fonts if f.chars & set(chars)]
    if usable and (not drawn or rng.random() < glyph_share):
        lineages = sorted({f.lineage for f in usable})
        lineage = lineages[int(rng.integers(len(lineages)))]
        in_lineage = [f for f in usable if f.lineage == lineage]
        font = in_lineage[int(rng.integers(len(in_lineage)))]
        have = [c for c in chars if c in font.chars]
        return have[int(rng.integers(len(have)))], font
    return "drawn:" + drawn[int(rng.integers(len(drawn)))], None


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 4) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return not (
        ax + aw + margin <= bx or bx + bw + margin <= ax or ay + ah + margin <= by or by + bh + margin <= ay
    )


def _stamp(
    rng: np.random.Generator,
    image: Gray,
    shape: str,
    font: Font | None,
    spec: SetSpec,
    max_rotation: float,
    taken: list[tuple[int, int, int, int]],
) -> Placed | None:
    """Render ``shape`` at a random size, angle, place, polarity and contrast onto ``image``."""
    base = _drawn(shape[6:], rng) if font is None else glyph_mask(font.path, shape)
    if base.size == 0 or float(base.sum()) < 20.0:
        return None
    longer = float(np.exp(rng.uniform(math.log(spec.min_size), math.log(spec.max_size))))
    angle = float(rng.uniform(-max_rotation, max_rotation))
    mask = _render(base, longer, angle)
    h, w = mask.shape
    frame = image.shape[0]
    if h == 0 or h + 4 >= frame or w + 4 >= frame:
        return None
    for _ in range(60):
        x = int(rng.integers(2, frame - w - 2))
        y = int(rng.integers(2, frame - h - 2))
        box = (x, y, w, h)
        if not any(_overlaps(box, t) for t in taken):
            break
    else:
        return None
    region = image[y : y + h, x : x + w]
    local = float(np.median(region))
    faint = rng.random() < 0.2
    delta = float(rng.uniform(0.07, 0.14) if faint else rng.uniform(0.14, 0.45))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if not 0.02 <= local + sign * delta <= 0.98:
        sign = -sign
    ink = float(np.clip(local + sign * delta, 0.0, 1.0))
    alpha = mask * float(rng.uniform(0.75, 1.0))
    if rng.random() < 0.15:  # worn: parts of the mark fade
        wear = cv2.resize(
            rng.uniform(0.35, 1.0, (4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        )
        alpha = alpha * np.clip(wear, 0.0, 1.0)
    region[...] = region * (1.0 - alpha) + ink * alpha
    taken.append(box)
    return Placed(
        shape=shape,
        font="drawn" if font is None else font.path,
        lineage="drawn" if font is None else font.lineage,
        box=box,
        size=round(longer, 1),
        angle=round(angle, 1),
        polarity="bright" if sign > 0 else "dark",
        contrast=round(abs(ink - local), 3),
        ink=round(float(alpha.sum()), 1),
    )


def make_frame(
    rng: np.random.Generator,
    symbol: Symbol,
    present: bool,
    backgrounds: Sequence[Background],
    fonts: Sequence[Font],
    spec: SetSpec,
) -> Frame:
    usable = [b for b in backgrounds if not (symbol.avoid_text and b.text)]
    groups = sorted({b.group for b in usable})
    group = groups[int(rng.integers(len(groups)))]  # a group first: a stereo pair is not twice as likely
    members = [b for b in usable if b.group == group]
    bg = members[int(rng.integers(len(members)))]
    image, crop = _background(rng, bg, spec.frame)
    taken: list[tuple[int, int, int, int]] = []
    target = None
    while present and target is None:
        shape, font = _pick_shape(rng, symbol.targets, symbol.target_drawn, fonts, spec.glyph_share)
        target = _stamp(rng, image, shape, font, spec, spec.max_rotation, taken)
    # look-alikes: on most negatives (one or two), and on some positives beside the symbol
    count = int(rng.choice([0, 1, 1, 2])) if not present else int(rng.random() < 0.35)
    lookalikes: list[Placed] = []
    for _ in range(count):
        for _attempt in range(10):
            shape, font = _pick_shape(rng, symbol.lookalikes, symbol.lookalike_drawn, fonts, spec.glyph_share)
            key = shape[6:] if shape.startswith("drawn:") else shape
            limit = min(TIGHT_ROTATION, spec.max_rotation) if key in symbol.tight else spec.max_rotation
            placed = _stamp(rng, image, shape, font, spec, limit, taken)
            if placed is not None:
                lookalikes.append(placed)
                break
    # light: a gradient and vignetting over everything, then defocus and sensor noise
    n = spec.frame
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    light = 1.0 + gx * xx + gy * yy + float(rng.uniform(-1.2, 0.3)) * (xx * xx + yy * yy)
    image = image * np.clip(light, 0.2, 2.0).astype(np.float32)
    blur = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.3, 1.6))
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    noise = float(rng.uniform(0.004, 0.04))
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    out = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Frame(out, bg, crop, target, lookalikes, round(blur, 2), round(noise, 4))


# ------------------------------------------------------------------------------------------------ sets

FIELDS = (
    "file",
    "split",
    "label",
    "background",
    "background_group",
    "crop",
    "target",
    "target_font",
    "target_lineage",
    "target_box",
    "target_size",
    "target_angle",
    "target_polarity",
    "target_contrast",
    "target_ink",
    "lookalikes",
    "lookalike_fonts",
    "lookalike_lineages",
    "lookalike_boxes",
    "blur",
    "noise",
)


def _row(file: str, split: str, f: Frame) -> dict[str, str]:
    t = f.target
    return {
        "file": file,
        "split": split,
        "label": "present" if t else "absent",
        "background": f.background.name,
        "background_group": f.background.group,
        "crop": f.crop,
        "target": shape_name(t.shape) if t else "",
        "target_font": t.font if t else "",
        "target_lineage": t.lineage if t else "",
        "target_box": ",".join(map(str, t.box)) if t else "",
        "target_size": str(t.size) if t else "",
        "target_angle": str(t.angle) if t else "",
        "target_polarity": t.polarity if t else "",
        "target_contrast": str(t.contrast) if t else "",
        "target_ink": str(t.ink) if t else "",
        "lookalikes": ";".join(shape_name(p.shape) for p in f.lookalikes),
        "lookalike_fonts": ";".join(p.font for p in f.lookalikes),
        "lookalike_lineages": ";".join(p.lineage for p in f.lookalikes),
        "lookalike_boxes": ";".join(",".join(map(str, p.box)) for p in f.lookalikes),
        "blur": str(f.blur),
        "noise": str(f.noise),
    }


def _labels(spec: SetSpec, symbol_index: int, split: str) -> npt.NDArray[np.bool_]:
    total, present = spec.count(split)
    labels = np.zeros(total, bool)
    labels[:present] = True
    return labels[np.random.default_rng([spec.seed, 3, symbol_index, SPLITS.index(split)]).permutation(total)]


def _chunk(args: tuple[SetSpec, str, str, list[int], str]) -> list[dict[str, str]]:
    spec, symbol_name, split, indices, root = args
    mat = material()
    sides = split_material(mat, spec)
    symbol = SYMBOLS[symbol_name]
    si = list(SYMBOLS).index(symbol_name)
    labels = _labels(spec, si, split)
    rows = []
    for i in indices:
        rng = np.random.default_rng([spec.seed, 4, si, SPLITS.index(split), i])
        frame = make_frame(rng, symbol, bool(labels[i]), sides.backgrounds[split], sides.fonts[split], spec)
        label = "present" if frame.target else "absent"
        rel = f"{split}/{label}/{symbol_name}-{split}-{i:05d}.png"
        ok, buf = cv2.imencode(".png", frame.image)
        if not ok:
            raise RuntimeError("PNG encoding failed")
        (Path(root) / rel).write_bytes(buf.tobytes())
        rows.append(_row(rel, split, frame))
    return rows


def generate_symbol(spec: SetSpec, symbol: str, out: Path, workers: int = 2) -> Path:
    """Write one symbol's train and test folders and manifest under ``out`` (replacing what is there)."""
    if out.exists():
        shutil.rmtree(out)
    for split in SPLITS:
        for label in ("present", "absent"):
            (out / split / label).mkdir(parents=True)
    jobs = []
    for split in SPLITS:
        total = spec.count(split)[0]
        step = max(1, math.ceil(total / (8 * max(1, workers))))
        jobs += [
            (spec, symbol, split, list(range(s, min(total, s + step))), str(out))
            for s in range(0, total, step)
        ]
    rows: list[dict[str, str]] = []
    if workers <= 1:
        for job in jobs:
            rows += _chunk(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_chunk, jobs):
                rows += part
    with open(out / MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for split in SPLITS:  # boxes for `inspectd label --import` (tiled training needs them)
        with open(out / split / LABELS_CSV, "w", newline="") as fh:
            plain = csv.writer(fh)
            plain.writerow(["file", "label", "x", "y", "w", "h"])
            for row in rows:
                if row["split"] == split:
                    box = row["target_box"].split(",") if row["target_box"] else ["", "", "", ""]
                    plain.writerow([row["file"].split("/", 1)[1], row["label"], *box])
    return out


def read_manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))


def ensure_sets(
    spec: SetSpec, cache: Path, workers: int = 2, log: Callable[[str], Any] = print
) -> tuple[Path, dict[str, Any]]:
    """The generated sets for ``spec`` under ``cache/quality-KEY/`` (generated once, then reused)."""
    mat = material()
    root = cache / f"quality-{spec.key(mat)}"
    sides = split_material(mat, spec)
    info = {
        "key": root.name,
        "spec": asdict(spec),
        "generator_version": GENERATOR_VERSION,
        "backgrounds": {s: [b.name for b in sides.backgrounds[s]] for s in SPLITS},
        "font_lineages": {s: sorted({f.lineage for f in sides.fonts[s]}) for s in SPLITS},
        "font_files": {s: len(sides.fonts[s]) for s in SPLITS},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "material.json").write_text(
        json.dumps({**info, "fonts": {s: [f.path for f in sides.fonts[s]] for s in SPLITS}}, indent=2) + "\n"
    )
    for symbol in spec.symbols:
        folder = root / symbol
        if (folder / COMPLETE).is_file():
            log(f"{symbol}: cached in {folder}")
            continue
        log(f"{symbol}: generating {spec.train} train + {spec.test} test images in {folder}")
        generate_symbol(spec, symbol, folder, workers)
        (folder / COMPLETE).write_text(json.dumps(asdict(spec)) + "\n")
    for symbol in spec.symbols:
        if not (root / symbol / ARTWORK).is_file():
            write_artwork(SYMBOLS[symbol], sides.fonts["train"], root / symbol / ARTWORK)
    return root, info


ARTWORK = "artwork.png"  # beside train/ and test/: the mark's artwork for `retrain --symbol`


def write_artwork(symbol: Symbol, fonts: Iterable[Font], out: Path) -> str:
    """The artwork a maintainer would have: the symbol's first target glyph, dark on white, from the
    first training-side font (by path) that has it; the test side's fonts are never used."""
    char = symbol.targets[0]
    font = min((f for f in fonts if char in f.chars), key=lambda f: f.path)
    ink = glyph_mask(font.path, char)
    padded = np.pad(ink, 12)
    cv2.imwrite(str(out), np.rint(255.0 * (1.0 - padded)).astype(np.uint8))
    return font.path
