"""The network alone: a LiteRT flatbuffer run in calls of a few fixed sizes, one interpreter per size."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
from ai_edge_litert.interpreter import Interpreter

MAX_CHUNK = 64  # inputs per interpreter call at most (bounds the activation memory of one call)


def _chunks(n: int) -> list[tuple[int, int]]:
    """``n`` inputs as interpreter calls of power-of-two sizes, so that a few shapes serve every batch:
    (inputs, call size) pairs. What is left is padded up to the next power of two when that wastes at
    most a quarter of the call; otherwise it is split (42 tiles: 32 + 8 + 2, not 64)."""
    out: list[tuple[int, int]] = []
    while n > 0:
        bucket = min(MAX_CHUNK, 1 << (n - 1).bit_length())
        if n >= bucket or n > 0.75 * bucket:
            take = min(n, bucket)
            out.append((take, bucket))
        else:
            take = bucket // 2
            out.append((take, take))
        n -= take
    return out


def call_sizes(max_inputs: int) -> list[int]:
    """Every interpreter call size a batch of up to ``max_inputs`` inputs can use (``_chunks``): powers of
    two, at most MAX_CHUNK. Beyond a few calls of MAX_CHUNK, more inputs add no new size."""
    top = min(max(1, max_inputs), 3 * MAX_CHUNK)
    return sorted({size for n in range(1, top + 1) for _, size in _chunks(n)})


class Runner:
    """The network alone (LiteRT): inputs in, one logit per input out; an interpreter per call size."""

    def __init__(self, content: bytes, input_size: tuple[int, int], num_threads: int) -> None:
        self._content = content
        self.threads = num_threads or (os.cpu_count() or 1)
        self._interpreters: dict[int, Interpreter] = {}
        self._shape = (*input_size, 1)

    def interpreter(self, bucket: int) -> Interpreter:
        interpreter = self._interpreters.get(bucket)
        if interpreter is None:
            interpreter = Interpreter(model_content=self._content, num_threads=self.threads)
            inputs = interpreter.get_input_details()
            outputs = interpreter.get_output_details()
            if len(inputs) != 1 or len(outputs) != 1:
                raise ValueError("the model must have exactly one input and one output")
            declared = tuple(int(d) for d in inputs[0]["shape"][1:])
            if declared != self._shape:
                raise ValueError(f"model input {declared} does not match metadata input_size {self._shape}")
            interpreter.resize_tensor_input(inputs[0]["index"], [bucket, *self._shape], strict=False)
            interpreter.allocate_tensors()
            self._interpreters[bucket] = interpreter
        return interpreter

    def check(self, bucket: int) -> None:
        """Create the interpreter for calls of ``bucket`` inputs and run one on zeros: ValueError or
        RuntimeError unless it gives one finite logit per input (a network built for a fixed batch fails
        here, when it is loaded, not on the first batch of that size)."""
        try:
            out = self._call(bucket, np.zeros((bucket, *self._shape), np.float32))
            if not np.all(np.isfinite(out)):
                raise ValueError(f"a call of {bucket} inputs outputs non-finite logits")
        except (ValueError, RuntimeError):
            self._interpreters.pop(bucket, None)
            raise

    def _call(self, size: int, part: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        interpreter = self.interpreter(size)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], part)
        interpreter.invoke()
        result = np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), np.float32)
        if result.size != size or (result.ndim and result.shape[0] != size):
            raise ValueError(f"a call of {size} inputs outputs shape {result.shape}, not one logit per input")
        return result.reshape(size)

    def logits(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.empty(batch.shape[0], np.float32)
        start = 0
        for take, size in _chunks(batch.shape[0]):
            part = batch[start : start + take]
            if take < size:
                part = np.concatenate([part, np.zeros((size - take, *self._shape), np.float32)])
            out[start : start + take] = self._call(size, part)[:take]
            start += take
        return out
