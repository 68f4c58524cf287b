"""The pure parts of retraining, in-process and fast: the artwork compositor (composite.py), the bag
targets and loss that tell a MIL head where composited marks are (bags.py), geometric augmentation at the
source resolution (geometry.py), the near-duplicate groups of the holdout split (dataset.py), and the
promotion gate (gate.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.core.retrain_config import RetrainConfig, SymbolConfig
from inspectd.ops.labels import Labeled
from inspectd.train.data.composite import ArtworkError, composite, load_artwork, synthesize
from inspectd.train.evaluate.metrics import Confusion, Metrics
from inspectd.train.evaluate.report import Report
from inspectd.train.fit.bags import INSIDE, OUTSIDE, bag_targets, frame_weights


def _cross(path: Path, dark_on_light: bool = True) -> Path:
    art = np.full((80, 80), 255 if dark_on_light else 0, np.uint8)
    cv2.line(art, (10, 10), (70, 70), 0 if dark_on_light else 255, 9)
    cv2.line(art, (10, 70), (70, 10), 0 if dark_on_light else 255, 9)
    assert cv2.imwrite(str(path), art)
    return path


def test_artwork_is_the_ink_whatever_the_polarity_or_alpha(tmp_path: Path) -> None:
    dark = load_artwork(_cross(tmp_path / "dark.png"))
    light = load_artwork(_cross(tmp_path / "light.png", dark_on_light=False))
    assert dark.mask.shape == light.mask.shape
    assert dark.mask.shape[0] < 80  # cropped to the mark
    assert np.abs(dark.mask - light.mask).max() < 0.02
    assert dark.mask[dark.mask.shape[0] // 2, dark.mask.shape[1] // 2] > 0.9  # the crossing is ink
    assert dark.mask[0, dark.mask.shape[1] // 2] < 0.1  # between the arms at the top edge: paper
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 18:22, 3] = 255  # a bar, only in the alpha channel
    assert cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    assert load_artwork(tmp_path / "alpha.png").mask.shape == (20, 4)


def test_artwork_that_shows_no_mark_is_refused(tmp_path: Path) -> None:
    assert cv2.imwrite(str(tmp_path / "blank.png"), np.full((30, 30), 200, np.uint8))
    with pytest.raises(ArtworkError, match="no mark"):
        load_artwork(tmp_path / "blank.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ArtworkError, match="not a readable image"):
        load_artwork(tmp_path / "junk.png")
    with pytest.raises(ArtworkError, match="not a readable image"):
        load_artwork(tmp_path / "missing.png")
    from tests.images import png_bomb

    (tmp_path / "bomb.png").write_bytes(png_bomb(100_000, 100_000))  # over OpenCV's own pixel limit
    with pytest.raises(ArtworkError, match="not a readable image"):
        load_artwork(tmp_path / "bomb.png")
    with pytest.raises(ArtworkError, match="not a readable image"):
        load_artwork(tmp_path)  # a folder


def test_a_composite_changes_only_its_box_and_respects_the_size_range(tmp_path: Path) -> None:
    art = load_artwork(_cross(tmp_path / "art.png"))
    rng = np.random.default_rng(3)
    background = np.random.default_rng(0).integers(60, 200, (240, 320), dtype=np.uint8)
    cfg = SymbolConfig(size=(0.1, 0.2), occlusion=0.0)
    for _ in range(40):
        out, (x, y, w, h) = composite(background, art, cfg, rng)
        assert out.shape == background.shape and out.dtype == np.uint8
        assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240
        changed = np.argwhere(out != background)
        assert len(changed) > 10, "the mark is drawn"
        assert changed[:, 0].min() >= y and changed[:, 0].max() < y + h
        assert changed[:, 1].min() >= x and changed[:, 1].max() < x + w
        # the longer side: the drawn size (0.1-0.2 of 240 px), widened by turning and shearing at most
        assert 0.5 * 24 <= max(w, h) <= 1.6 * 48
    again = composite(background, art, cfg, np.random.default_rng(7))
    assert np.array_equal(again[0], composite(background, art, cfg, np.random.default_rng(7))[0])


def test_artwork_too_thin_for_the_size_is_a_clear_error(tmp_path: Path) -> None:
    art = np.full((400, 400), 255, np.uint8)
    cv2.line(art, (0, 0), (399, 399), 0, 1)  # a hairline: gone when drawn 8 px across
    assert cv2.imwrite(str(tmp_path / "hair.png"), art)
    thin = load_artwork(tmp_path / "hair.png")
    cfg = SymbolConfig(size=(0.05, 0.05), blur_sigma=0.0)
    with pytest.raises(ArtworkError, match="strokes vanish"):
        composite(np.full((160, 160), 128, np.uint8), thin, cfg, np.random.default_rng(0))


def test_synthesize_draws_into_the_given_absent_images_and_boxes_follow_the_resize(tmp_path: Path) -> None:
    art = load_artwork(_cross(tmp_path / "art.png"))
    items = []
    for i in range(3):
        path = tmp_path / f"bg{i}.png"
        assert cv2.imwrite(str(path), np.full((400, 400), 40 + 60 * i, np.uint8))
        items.append(Labeled(path, 0, str(i), "folder"))
    (tmp_path / "broken.png").write_bytes(b"xx")
    items.append(Labeled(tmp_path / "broken.png", 0, "b", "folder"))  # skipped, not fatal
    made = list(synthesize(items, art, SymbolConfig(occlusion=0.0), 7, (100, 100), None, seed=1))
    assert len(made) == 7
    for image, (x, y, w, h) in made:
        assert image.shape == (100, 100, 1) and image.dtype == np.float32
        assert x >= 0 and y >= 0 and x + w <= 100 and y + h <= 100
        inside = image[y : y + h, x : x + w, 0]
        outside = image.copy()
        outside[y : y + h, x : x + w] = np.nan
        assert np.nanstd(outside) < 1e-6, "nothing drawn outside the box"
        assert inside.std() > 0.01, "the mark is inside it"
    # with a region of interest, the mark lies in it and the box is in the ROI's input pixels
    roi_made = list(synthesize(items[:1], art, SymbolConfig(), 3, (64, 64), (200, 200, 200, 200), seed=2))
    assert all(x + w <= 64 and y + h <= 64 for _, (x, y, w, h) in roi_made)
    assert list(synthesize(items[3:], art, SymbolConfig(), 3, (64, 64), None, seed=1)) == []


def test_bag_targets_say_where_the_mark_may_and_cannot_be() -> None:
    labels = np.array([0, 1, 1])
    t = bag_targets(labels, [None, None, (40, 8, 16, 16)], (8, 8), 8.0)
    assert t.shape == (3, 8, 8, 2)
    assert t[0, :, :, OUTSIDE].all() and not t[0, :, :, INSIDE].any()  # absent: no place holds it
    assert t[1, :, :, INSIDE].all() and not t[1, :, :, OUTSIDE].any()  # present, no box: any place
    inside = np.argwhere(t[2, :, :, INSIDE] > 0)
    assert {tuple(c) for c in inside} == {(1, 5), (1, 6), (2, 5), (2, 6)}  # cells centred on the box
    assert t[2, 7, 0, OUTSIDE] == 1.0  # far away: cannot hold it
    assert t[2, 1, 4, OUTSIDE] == 0.0 and t[2, 1, 4, INSIDE] == 0.0  # beside it: neither
    tiny = bag_targets(np.array([1]), [(3, 3, 2, 2)], (4, 4), 16.0)
    assert tiny[0, 0, 0, INSIDE] == 1.0 and tiny[0, :, :, INSIDE].sum() == 1  # the cell of its centre


def test_frame_weights_balance_the_classes() -> None:
    w = frame_weights(np.array([1, 0, 0, 0]))
    assert w[0] * 1 == pytest.approx(w[1:].sum())
    assert frame_weights(np.array([1, 1])).tolist() == [1.0, 1.0]


def test_symbol_configuration_is_strict() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        SymbolConfig(size=(0.3, 0.1))
    with pytest.raises(ValueError, match="extra"):
        RetrainConfig.model_validate({"symbol": {"artwork": "a.png", "colour": 1}})
    assert RetrainConfig.model_validate({"symbol": {"artwork": "a.png"}}).symbol.artwork == Path("a.png")


@pytest.mark.train
def test_bag_loss_is_cross_entropy_on_the_highest_place_of_each_bag() -> None:
    from inspectd.train.fit.bags import bag_loss
    from inspectd.train.tf import tensorflow

    tf = tensorflow()
    # two frames, each a row of four places (stride 4)
    z = np.array([[[1.0, -2.0, 3.0, 0.5]], [[-1.0, 2.0, 0.0, -3.0]]], np.float32)[..., None]
    t = bag_targets(np.array([0, 1]), [None, (0, 0, 4, 4)], (1, 4), 4.0)
    got = np.asarray(bag_loss(tf.constant(t), tf.constant(z)))

    def softplus(v: float) -> float:
        return float(np.log1p(np.exp(v)))

    # absent: its hardest place (3.0) toward 0; present, box on the first place: that place (-1.0)
    # toward 1, and the one far from the box (-3.0) toward 0; the two beside the box do not count
    assert t[1, 0, :, OUTSIDE].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert got[0] == pytest.approx(softplus(3.0), rel=1e-5)
    assert got[1] == pytest.approx(softplus(1.0) + softplus(-3.0), rel=1e-5)


@pytest.mark.train
def test_place_loss_is_the_mean_cross_entropy_of_every_counted_place() -> None:
    """The warm-up loss: every place of a bag against the bag's target, the places beside a box left out."""
    from inspectd.train.fit.bags import place_loss
    from inspectd.train.tf import tensorflow

    tf = tensorflow()
    z = np.array([[[1.0, -2.0, 3.0, 0.5]], [[-1.0, 2.0, 0.0, -3.0]], [[0.0, 1.0, -1.0, 2.0]]], np.float32)
    t = bag_targets(np.array([0, 1, 1]), [None, (0, 0, 4, 4), None], (1, 4), 4.0)
    got = np.asarray(place_loss(tf.constant(t), tf.constant(z[..., None])))

    def softplus(v: float) -> float:
        return float(np.log1p(np.exp(v)))

    assert got[0] == pytest.approx(np.mean([softplus(v) for v in z[0, 0]]), rel=1e-5)  # absent: all toward 0
    # present with a box on the first place: that place toward 1, the far one toward 0, two left out
    assert got[1] == pytest.approx((softplus(1.0) + softplus(-3.0)) / 2, rel=1e-5)
    assert got[2] == pytest.approx(
        np.mean([softplus(-v) for v in z[2, 0]]), rel=1e-5
    )  # present: all toward 1


def test_reshots_of_one_part_share_a_group_and_other_images_do_not(tmp_path: Path) -> None:
    from inspectd.train.data.dataset import groups
    from tests.images import png_bomb

    rng = np.random.default_rng(5)
    scene = cv2.GaussianBlur(rng.integers(0, 255, (300, 300), dtype=np.uint8), (0, 0), 6)
    other = cv2.GaussianBlur(rng.integers(0, 255, (300, 300), dtype=np.uint8), (0, 0), 6)
    items = []
    for name, image in (
        ("a", scene[:256, :256]),
        ("a-shifted", scene[2:258, 2:258]),  # the same part, re-shot 2 px off
        ("b", other[:256, :256]),
    ):
        path = tmp_path / f"{name}.png"
        assert cv2.imwrite(str(path), image)
        items.append(Labeled(path, 0, name, "folder"))
    (tmp_path / "broken.png").write_bytes(b"no")
    items.append(Labeled(tmp_path / "broken.png", 0, "broken", "folder"))
    # a decompression bomb (a 100,000-pixel square in a few KB) is never decoded to be hashed: its header
    # is over the decode stage's limit (this would take 20 GB)
    (tmp_path / "bomb.png").write_bytes(png_bomb(100_000, 100_000))
    items.append(Labeled(tmp_path / "bomb.png", 0, "bomb", "folder"))
    g = groups(items, 50_000_000)
    assert g[0] == g[1] and g[2] != g[0]
    assert g[3] == "broken" and g[4] == "bomb"  # unreadable, or refused: a group of its own
    assert groups(list(reversed(items)), 50_000_000) == list(reversed(g))  # the order does not matter
    assert groups(items, 256 * 256 - 1)[:3] == ["a", "a-shifted", "b"]  # over the limit: not hashed


def test_geometric_augmentation_at_the_source_keeps_a_thin_mark(tmp_path: Path) -> None:
    """A 2-px cross on a 1024 px frame, turned 20 degrees: turned at the source and then reduced to 128 px
    (what retrain does) it keeps its strokes; reduced first and turned after (what an in-pipeline rotation
    does) the second interpolation spreads them (the same ink over more pixels, half the energy)."""
    from inspectd.core.preprocess import preprocess
    from inspectd.core.retrain_config import AugmentConfig
    from inspectd.train.data.geometry import source_copies, warp

    frame = np.full((1024, 1024), 200, np.uint8)
    cv2.line(frame, (312, 512), (712, 512), 40, 2)
    cv2.line(frame, (512, 312), (512, 712), 40, 2)
    cfg = AugmentConfig(rotation_deg=20, scale=0, shear_deg=0, translate=0)

    class Fixed:  # always the largest turn
        def uniform(self, low: float, high: float, size: int | None = None) -> object:
            return np.full(size, high) if size else high

    at_source = preprocess(warp(frame, cfg, Fixed()), (128, 128))  # type: ignore[arg-type]
    small = (preprocess(frame, (128, 128))[:, :, 0] * 255).astype(np.uint8)
    after = preprocess(warp(small, cfg, Fixed()), (128, 128))  # type: ignore[arg-type]

    def ink(image: np.ndarray) -> float:  # the mark's energy: darkening below the background, squared
        return float((np.clip(200 / 255 - image, 0, None) ** 2).sum())

    assert ink(at_source) > 1.5 * ink(after), (ink(at_source), ink(after))  # measured 4.8 vs 2.5

    path = tmp_path / "f.png"
    assert cv2.imwrite(str(path), frame)
    copies = list(
        source_copies(
            [Labeled(path, 1, "f", "folder"), Labeled(tmp_path / "gone.png", 0, "g", "folder")],
            AugmentConfig(source_copies=3),
            (64, 64),
            None,
            seed=4,
        )
    )
    assert len(copies) == 3 and all(label == 1 and image.shape == (64, 64, 1) for image, label in copies)
    assert not np.array_equal(copies[0][0], copies[1][0])  # each copy its own transform


def _report(precision: float, recall: float, auc: float, points: list[list[float]]) -> Report:
    confusion = Confusion(0, 0, 0, 0)
    metrics = Metrics(100, 25, 0.5, precision, recall, 0.0, auc, None, 0.0, confusion)
    return Report("v", metrics, {}, [], points, [], [])


def test_the_gate_asks_whether_the_candidate_can_do_what_the_active_model_does() -> None:
    from inspectd.core.retrain_config import GateConfig
    from inspectd.train.evaluate.gate import gate

    rules = GateConfig()
    # the active model calls nearly everything present: recall 0.9 at precision 0.27
    active = _report(0.27, 0.90, 0.59, [])
    # a better ranker whose own threshold is stricter (recall 0.62 at precision 0.71), and which reaches
    # recall 0.95 at precision 0.30: no worse at the active model's operating point
    better = _report(0.71, 0.62, 0.88, [[0.30, 0.95], [0.5, 0.8], [0.71, 0.62], [1.0, 0.0]])
    passed, why = gate(better, active, rules)
    assert passed, why
    assert "at the active model's precision 0.2700 recall 0.9500 vs 0.9000" in why
    # the same curve that cannot reach the active model's recall at its precision
    weaker = _report(0.71, 0.62, 0.88, [[0.30, 0.85], [0.71, 0.62], [1.0, 0.0]])
    assert not gate(weaker, active, rules)[0]
    # a ranking that lost ROC-AUC is refused whatever its operating points
    assert not gate(_report(0.9, 0.95, 0.55, [[0.9, 0.95]]), active, rules)[0]
    # no operating points recorded (an older report): its own threshold is the only point
    assert gate(_report(0.30, 0.92, 0.60, []), active, rules)[0]
    assert not gate(_report(0.20, 0.99, 0.60, []), active, rules)[0]  # more recall, less precision
    assert gate(better, None, rules) == (True, "no active model to compare with")
