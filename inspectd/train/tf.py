"""The one place TensorFlow is imported, quietly and with its thread settings applied first."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any


def tensorflow(threads: int = 0) -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised in this process: keep what is set
            pass
    module: ModuleType = tf
    return module


def keras() -> Any:
    tensorflow()
    import keras as k

    return k
