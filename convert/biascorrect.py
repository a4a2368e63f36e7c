"""Bias correction for post-training int8: cancel the mean error that weight rounding adds to each conv channel.

The TFLite converter folds a BatchNorm into the convolution before it and rounds the folded kernel to int8, per
output channel and symmetric: ``q = round(w / s)`` with ``s = max|w| / 127``. That rounding error is small relative
to the weights, but it is not small relative to what a channel carries when the channel's output is a large
constant plus a small signal (ImageNet features on a new dataset are often like that): the constant part of
``(w_q - w) * x`` shifts the whole channel, and the shift adds up layer after layer. Measured on a MobileNet V1 0.25
fine-tuned on flowers128, rounding the weights alone moved 8% of the test predictions.

The remedy (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", in its
data-driven form; Finkelstein et al. 2019) is to compute the expected error of each channel on calibration images,
``E[conv(x, w_q - w)]``, and subtract it from the bias the converter folds in. The float model is not changed: the
corrected biases live only while the int8 model is converted (`corrected_biases`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_BATCH = 32
_PROBE_BYTES = 256 * 2**20  # the conv inputs of one probe batch stay under this


@dataclass
class _Target:
    conv: Any  # keras Conv2D or DepthwiseConv2D
    bias: Any  # the variable the converter folds into the int8 bias: BatchNorm beta, or the conv's own bias
    fold: np.ndarray  # per output channel: what the converter multiplies the kernel by (BatchNorm gamma / std)


def quantize_kernel(kernel: np.ndarray, fold: np.ndarray, depthwise: bool) -> np.ndarray:
    """The float kernel the int8 model effectively uses: folded, rounded per output channel as the converter
    does (symmetric, narrow range [-127, 127]), and unfolded again."""
    if depthwise:  # (kh, kw, in, multiplier); output channel = in * multiplier + m
        f = fold.reshape(1, 1, kernel.shape[2], kernel.shape[3])
        axes: tuple[int, ...] = (0, 1)
    else:  # (kh, kw, in, out)
        f = fold.reshape(1, 1, 1, -1)
        axes = (0, 1, 2)
    folded = kernel * f
    scale = np.abs(folded).max(axis=axes, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(folded / scale), -127, 127) * scale / np.where(f != 0, f, 1.0)).astype(kernel.dtype)


def _targets(model: Any) -> list[tuple[Any, list[_Target]]]:
    """(container, targets) for the model and each nested model: every Conv2D/DepthwiseConv2D whose only reader is
    a BatchNorm (folded by the converter), or that has its own bias."""
    import keras

    out = []
    containers = [model] + [layer for layer in model.layers if isinstance(layer, keras.Model)]
    for container in containers:
        found = []
        for layer in container.layers:
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            if not (depthwise or type(layer) is keras.layers.Conv2D) or getattr(layer, "groups", 1) != 1:
                continue
            if not depthwise and layer.data_format != "channels_last":
                continue
            bn = _only_reader(container, layer)
            if isinstance(bn, keras.layers.BatchNormalization) and bn.center and bn.axis in (-1, 3, [-1], [3]):
                var = np.asarray(bn.moving_variance)
                fold = 1.0 / np.sqrt(var + bn.epsilon)
                if bn.scale:
                    fold = fold * np.asarray(bn.gamma)
                found.append(_Target(layer, bn.beta, fold.astype(np.float32)))
            elif layer.use_bias and not isinstance(bn, keras.layers.BatchNormalization):
                found.append(_Target(layer, layer.bias, np.ones(layer.bias.shape, np.float32)))
        if found:
            out.append((container, found))
    return out


def _only_reader(container: Any, layer: Any) -> Any:
    """The single layer that reads ``layer``'s output inside ``container``; None when there are several or the
    output also leaves the container (the converter cannot fold a BatchNorm into such a conv)."""
    readers = [
        other
        for other in container.layers
        for node in getattr(other, "_inbound_nodes", [])
        if any(parent.operation is layer for parent in node.parent_nodes)
    ]
    if len(readers) != 1 or any(t._keras_history[0] is layer for t in container.outputs):
        return None
    return readers[0]


def _container_inputs(model: Any, container: Any, images: np.ndarray) -> np.ndarray:
    """What ``container`` (the model itself or a nested model) receives when ``model`` sees ``images``."""
    import keras

    if container is model:
        return images
    node = container._inbound_nodes[0]
    feeder = keras.Model(model.inputs, node.input_tensors[0] if len(node.input_tensors) == 1 else node.input_tensors)
    return feeder.predict(images, batch_size=_BATCH, verbose=0)


def sum_over_inputs(
    model: Any, representative: np.ndarray, fn: Callable[[_Target, np.ndarray], Any], max_batch: int = _BATCH
) -> list[tuple[_Target, Any]]:
    """Per target, the sum over batches of ``fn(target, x)``, where ``x`` is a batch of what the target's conv
    receives when ``model`` sees ``representative`` (float32 model inputs)."""
    import keras

    results = []
    for container, targets in _targets(model):
        inputs = _container_inputs(model, container, representative)
        probe = keras.Model(container.inputs, [t.conv.input for t in targets])
        per_image = sum(int(np.prod(t.conv.input.shape[1:])) * 4 for t in targets)
        batch_size = int(max(1, min(max_batch, _PROBE_BYTES // max(per_image, 1))))
        sums: list[Any] = [0.0] * len(targets)
        for start in range(0, len(inputs), batch_size):
            feats = probe.predict(inputs[start : start + batch_size], batch_size=batch_size, verbose=0)
            if len(targets) == 1:
                feats = [feats]
            for i, (t, x) in enumerate(zip(targets, feats)):
                sums[i] = sums[i] + fn(t, np.asarray(x))
        results.extend(zip(targets, sums))
    return results


def channel_errors(model: Any, representative: np.ndarray) -> list[tuple[_Target, np.ndarray]]:
    """Per target, the mean output error per channel that int8 weight rounding adds, on ``representative``
    (float32 model inputs)."""
    import keras

    deltas = {}
    for _, targets in _targets(model):
        for t in targets:
            kernel = np.asarray(t.conv.kernel)
            depthwise = isinstance(t.conv, keras.layers.DepthwiseConv2D)
            deltas[id(t.conv)] = quantize_kernel(kernel, t.fold, depthwise) - kernel

    def error_sum(t: _Target, x: np.ndarray) -> np.ndarray:
        return np.asarray(_conv(t.conv, x, deltas[id(t.conv)])).sum(axis=(0, 1, 2), dtype=np.float64)

    positions = lambda t: len(representative) * int(np.prod(t.conv.output.shape[1:3]))
    return [
        (t, (total / positions(t)).astype(np.float32)) for t, total in sum_over_inputs(model, representative, error_sum)
    ]


def _conv(layer: Any, x: np.ndarray, kernel: np.ndarray) -> Any:
    import keras

    args = {
        "strides": layer.strides,
        "padding": layer.padding,
        "data_format": "channels_last",
        "dilation_rate": layer.dilation_rate,
    }
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return keras.ops.depthwise_conv(x, kernel, **args)
    return keras.ops.conv(x, kernel, **args)


@contextlib.contextmanager
def corrected_biases(model: Any, representative: np.ndarray) -> Iterator[int]:
    """While the block runs, each foldable conv's bias is lowered by its channels' expected int8 weight-rounding
    error (see the module docstring); yields how many layers were corrected, and restores the float biases."""
    saved = []
    try:
        for target, error in channel_errors(model, representative):
            before = np.asarray(target.bias)
            saved.append((target.bias, before))
            target.bias.assign(before - target.fold * error)
        log.debug("bias correction on %d conv layers", len(saved))
        yield len(saved)
    finally:
        for variable, value in saved:
            variable.assign(value)
