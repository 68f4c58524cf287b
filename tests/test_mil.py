"""Multiple-instance training from image-level labels (``[retrain] head = "mil"``) and the input size
chosen from the images (``input_size = 0``): short, on generated arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.ops.labels import Labeled

pytestmark = pytest.mark.train


def _items(folder: Path, sizes: list[tuple[int, int]]) -> list[Labeled]:
    out = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"{i}.png"
        assert cv2.imwrite(str(path), np.zeros((h, w), np.uint8))
        out.append(Labeled(path, i % 2, str(i), "folder"))
    return out


def test_input_size_chosen_from_the_images(tmp_path: Path) -> None:
    from inspectd.train.inputs import AUTO_INPUT_MAX, auto_input_size

    assert auto_input_size(_items(tmp_path, [(256, 256)] * 3 + [(640, 480)]), None, None) == 256
    assert auto_input_size(_items(tmp_path, [(200, 150)] * 5), None, None) == 208  # a multiple of 16
    assert auto_input_size(_items(tmp_path, [(1280, 1024)] * 3), None, None) == AUTO_INPUT_MAX
    assert auto_input_size(_items(tmp_path, [(1280, 1024)] * 3), None, (0, 0, 96, 96)) == 96  # the ROI
    assert auto_input_size([], 96, None) == 96  # tiles at their own resolution
    from tests.images import png_bomb

    (tmp_path / "bomb.png").write_bytes(png_bomb(100_000, 100_000))  # its header is not a size to use
    bomb = Labeled(tmp_path / "bomb.png", 0, "bomb", "folder")
    assert auto_input_size([*_items(tmp_path, [(200, 150)] * 5), bomb], None, None) == 208
    from inspectd.core.retrain_config import RetrainConfig

    with pytest.raises(ValueError, match="at least 32"):
        RetrainConfig(input_size=16)


def test_mil_networks_train_export_int8_and_run_in_litert(tmp_path: Path) -> None:
    """The MIL small CNN (any input size, one logit per frame: the best place's) and the pretrained MIL
    head, whose first phase trains on cached feature maps, then fine-tunes: both ship to LiteRT."""
    from inspectd.core.retrain_config import RetrainConfig
    from inspectd.model.runtime import Inferencer
    from inspectd.train.convert import convert, export_version
    from inspectd.train.fit.frames import train_arrays

    rng = np.random.default_rng(0)
    x = rng.random((32, 64, 64, 1), dtype=np.float32) * 0.5
    y = np.array([0, 1] * 16)
    x[y == 1, 20:30, 30:40] = 1.0  # a bright patch somewhere: the "symbol"
    for backbone in ("small_cnn", "efficientnet_lite0"):
        rc = RetrainConfig(
            backbone=backbone, head="mil", input_size=64, epochs=1, fine_tune_epochs=1, batch_size=8
        )
        trained = train_arrays(rc, x, y, x, y, tmp_path / backbone)
        # the pretrained MIL head: three starts, each three warm-up epochs on every place and one on the
        # maximum, then one of fine-tuning
        assert (
            trained.epochs_run
            == (1 if backbone == "small_cnn" else rc.head_restarts * (rc.warmup_epochs + rc.epochs) + 1)
            == (1 if backbone == "small_cnn" else 13)
        )
        keras_logits = np.asarray(trained.model.predict(x, verbose=0)).reshape(-1)
        assert keras_logits.shape == (32,) and np.all(np.isfinite(keras_logits))
        converted = convert(trained.model, (64, 64), "int8", x, x, y, max_auc_drop=1.0)
        assert converted.quantization == "int8", converted.fidelity
        export_version(converted, tmp_path / f"v-{backbone}", f"v-{backbone}", 0.5, (1.0, 0.0), x[:4], {}, {})
        loaded = Inferencer.load(tmp_path / f"v-{backbone}", num_threads=1, max_inputs=16)
        assert np.all(np.isfinite(loaded.logits(x[:9])))
