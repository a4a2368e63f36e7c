"""Int8 tuning: round the weights so that their errors cancel, then fine-tune the model with that rounding in the
loop to match the float model. For models whose int8 version disagrees with the float one more than rounding to
nearest plus bias correction can fix (fine-tuned MobileNets: 95-96% top-1 agreement on flowers128).

Two steps, both inside what the TFLite converter does anyway (per-channel int8 weights, BatchNorm folded), so the
int8 file is the tuned model:

1. **Error-compensating rounding** (GPTQ: Frantar et al. 2023, after Optimal Brain Quantization). Each conv kernel
   is folded with its BatchNorm and rounded per output channel to the converter's symmetric [-127, 127] grid, one
   input weight at a time; the rounding error of each weight is pushed onto the weights not yet rounded, weighted
   by the inverse Hessian ``X^T X`` of the layer's inputs on the calibration images. The channel's largest weight is
   rounded first and exactly, so the converter derives the same scale and reproduces every integer.
2. **Distillation with the rounding in the loop** (quantisation-aware fine-tuning, with the float model as the
   teacher instead of the labels). The conv kernels (rounded per channel in the forward pass, straight-through
   gradients), the BatchNorm gammas and betas and the biases are trained to match the float model's output
   probabilities (KL divergence) on training images, with the ReLU6 outputs fake-quantised to 8 bits. Per-channel
   rounding does not change when a whole output channel is scaled, so the BatchNorm the converter folds in later
   does not change it either: the rounding in training is the converter's.

The float model is restored exactly when the block ends (`tuned_for_int8`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .biascorrect import sum_over_inputs

log = logging.getLogger(__name__)

MAX_IMAGES = 4096  # tuning images from the training split (flowers128 MobileNet: 1,024 gave less than all 2,438)
_HESSIAN_BATCH = 16
_DAMP = 0.01  # added to the Hessian diagonal, as a fraction of its mean


def gptq_rows(weights: np.ndarray, scales: np.ndarray, hessian: np.ndarray, damp: float = _DAMP) -> np.ndarray:
    """Integer levels in [-127, 127] for each row of ``weights`` (rows, d) at step ``scales`` (rows,), chosen so
    that the rows' output error on inputs with second moment ``hessian`` (d, d) stays small. Each row's largest
    weight is rounded first (its level is exactly +-127, so the converter re-derives the same scale)."""
    w = weights.astype(np.float64)
    s = scales.astype(np.float64)
    levels = np.zeros_like(w)
    peak = np.abs(w).argmax(axis=1)
    by_activity = np.argsort(-np.diag(hessian), kind="stable")  # the most active inputs first
    for m in np.unique(peak):
        rows = np.flatnonzero(peak == m)
        levels[rows, m] = np.clip(np.round(w[rows, m] / s[rows]), -127, 127)
        keep = by_activity[by_activity != m]
        if keep.size == 0:
            continue
        h = hessian[np.ix_(keep, keep)].astype(np.float64)
        mean_diag = float(np.mean(np.diag(h)))
        h[np.diag_indices_from(h)] += damp * (mean_diag if mean_diag > 0 else 1.0)
        upper = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of the inverse Hessian
        rest = w[np.ix_(rows, keep)]
        for i in range(keep.size):
            q = np.clip(np.round(rest[:, i] / s[rows]), -127, 127)
            levels[rows, keep[i]] = q
            err = (rest[:, i] - q * s[rows]) / upper[i, i]
            rest[:, i + 1 :] -= np.outer(err, upper[i, i + 1 :])
    return levels


def gptq_kernel(kernel: np.ndarray, fold: np.ndarray, depthwise: bool, hessian: np.ndarray) -> np.ndarray:
    """``kernel`` (Keras layout) moved onto the converter's int8 grid by `gptq_rows`, unfolded again. ``hessian``:
    (kh*kw*in, kh*kw*in) for a conv; (in, kh*kw, kh*kw), one per input channel, for a depthwise conv."""
    kh, kw, cin, cout = kernel.shape
    fold = fold.astype(np.float64)
    rows = (kernel.reshape(kh * kw, cin * cout) if depthwise else kernel.reshape(kh * kw * cin, cout)).T
    folded = rows * fold[:, None]
    scales = np.abs(folded).max(axis=1) / 127.0
    scales = np.where(scales > 0, scales, 1.0)
    if depthwise:  # output channel c * multiplier + j reads input channel c alone
        levels = np.concatenate(
            [gptq_rows(folded[r : r + 1], scales[r : r + 1], hessian[r // cout]) for r in range(folded.shape[0])]
        )
    else:
        levels = gptq_rows(folded, scales, hessian)
    grid = levels * scales[:, None] / np.where(fold != 0, fold, 1.0)[:, None]
    return grid.T.reshape(kernel.shape).astype(kernel.dtype)


def _patches(layer: Any, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    kh, kw = layer.kernel_size
    if (kh, kw) == (1, 1) and tuple(layer.strides) == (1, 1):
        return x
    return tf.image.extract_patches(
        x,
        sizes=[1, kh, kw, 1],
        strides=[1, *layer.strides, 1],
        rates=[1, *layer.dilation_rate, 1],
        padding=layer.padding.upper(),
    ).numpy()


def hessians(model: Any, calibration: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """(target, input second moment) for every conv the converter folds (see edgecls.convert.biascorrect._targets)."""
    import keras

    def second_moment(t: Any, x: np.ndarray) -> np.ndarray:
        p = _patches(t.conv, x)
        if isinstance(t.conv, keras.layers.DepthwiseConv2D):
            kh, kw = t.conv.kernel_size
            p = p.reshape(-1, kh * kw, x.shape[-1]).astype(np.float64)
            return np.einsum("nkc,nlc->ckl", p, p)
        p = p.reshape(-1, p.shape[-1]).astype(np.float64)
        return p.T @ p

    return sum_over_inputs(model, calibration, second_moment, max_batch=_HESSIAN_BATCH)


def _leaves(model: Any) -> Iterator[Any]:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer)
        else:
            yield layer


def _tunable(model: Any) -> list[Any]:
    """BatchNorm gammas and betas, and conv/dense biases (the kernels are trained too, see
    `_fake_quantised_kernels`)."""
    import keras

    found = []
    for layer in _leaves(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            found += [v for v in (layer.gamma, layer.beta) if v is not None]
        elif (
            isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))
            and layer.use_bias
        ):
            found.append(layer.bias)
    return found


@contextlib.contextmanager
def _patched_calls(replacements: list[tuple[Any, Callable[..., Any]]]) -> Iterator[None]:
    """While the block runs, each layer's ``call`` is the given function (bound to the layer)."""
    for layer, call in replacements:
        layer.call = types.MethodType(call, layer)
    try:
        yield
    finally:
        for layer, _ in replacements:
            del layer.call


def _fake_quantised_relu6(model: Any) -> list[tuple[Any, Callable[..., Any]]]:
    """Calls for every capped ReLU layer that round its output to the 8-bit grid over [0, cap], as the int8 model
    stores it (gradients pass straight through)."""
    import keras
    import tensorflow as tf

    replacements = []
    for layer in _leaves(model):
        if isinstance(layer, keras.layers.ReLU) and layer.max_value:

            def call(self: Any, x: Any, _orig: Any = layer.call, _cap: float = float(layer.max_value)) -> Any:
                return tf.quantization.fake_quant_with_min_max_args(_orig(x), 0.0, _cap, num_bits=8)

            replacements.append((layer, call))
    return replacements


def _convs(model: Any) -> list[Any]:
    import keras

    return [
        layer
        for layer in _leaves(model)
        if isinstance(layer, keras.layers.DepthwiseConv2D)
        or (type(layer) is keras.layers.Conv2D and layer.groups == 1 and layer.data_format == "channels_last")
    ]


def _fake_quantised_kernels(convs: list[Any]) -> list[tuple[Any, Callable[..., Any]]]:
    """Calls for each conv that compute with its kernel rounded as the converter rounds it: per output channel,
    symmetric, [-127, 127]. A BatchNorm folded into the kernel scales whole output channels, which does not change
    that rounding, so the raw kernel's rounding is the folded one's. Gradients pass straight through to the float
    kernel (the straight-through estimator)."""
    import keras
    import tensorflow as tf

    from .biascorrect import _conv

    replacements = []
    for layer in convs:
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)

        def call(self: Any, x: Any, _axes: tuple[int, ...] = (0, 1) if depthwise else (0, 1, 2)) -> Any:
            kernel = self.kernel
            scale = tf.stop_gradient(tf.reduce_max(tf.abs(kernel), axis=_axes, keepdims=True) / 127.0)
            scale = tf.where(scale > 0, scale, tf.ones_like(scale))
            rounded = tf.clip_by_value(tf.round(kernel / scale), -127.0, 127.0) * scale
            out = _conv(self, x, kernel + tf.stop_gradient(rounded - kernel))
            if self.use_bias:
                out = out + self.bias
            return self.activation(out) if self.activation is not None else out

        replacements.append((layer, call))
    return replacements


def _as_distribution(p: Any) -> Any:
    import tensorflow as tf

    return tf.concat([1.0 - p, p], axis=-1) if p.shape[-1] == 1 else p  # a sigmoid head: two classes


def tuning_images(images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The tuning images convert --int8-tune uses: up to MAX_IMAGES, stratified, drawn from the training split
    (``images``, ``labels``) with a seed apart from the calibration sample's."""
    from .data import stratified_sample

    return images[stratified_sample(labels, min(MAX_IMAGES, len(labels)), seed + 1)]


def export_tuned(
    model: Any, calibration: np.ndarray, images: np.ndarray, *, io_type: str = "int8", **tuning: Any
) -> tuple[bytes, dict[str, Any]]:
    """Full-int8 TFLite bytes of ``model`` tuned as `tuned_for_int8` does (``tuning``: its keyword arguments), and
    the tuning summary; ``model`` is unchanged afterwards."""
    from .tflite_export import to_tflite

    with tuned_for_int8(model, calibration, images, **tuning) as summary:
        flat = to_tflite(model, mode="int8", io_type=io_type, representative=calibration, bias_correction=False)
    return flat, summary


@contextlib.contextmanager
def tuned_for_int8(
    model: Any,
    calibration: np.ndarray,
    images: np.ndarray,
    *,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    epochs: int = 16,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    kernel_learning_rate: float = 1e-4,
    seed: int = 0,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """While the block runs, ``model`` holds int8-tuned weights (see the module docstring): convert it inside the
    block. ``calibration``: float32 model inputs for the Hessians; ``images``: the tuning images (raw, passed through
    ``normalize`` batch by batch). Yields a summary (layers, images, epochs, KL before and after, seconds); the float
    weights come back exactly afterwards."""
    norm = normalize or (lambda x: x.astype(np.float32))
    started = time.perf_counter()
    saved = [(v, np.array(v)) for v in model.weights]
    try:
        teacher = np.concatenate(
            [np.asarray(model.predict(norm(images[i : i + 64]), verbose=0)) for i in range(0, len(images), 64)]
        )
        rounded = _round_kernels(model, calibration)
        variables = _tunable(model)
        convs = _convs(model) if kernel_learning_rate > 0 else []
        steps = max(1, epochs * -(-len(images) // batch_size))
        step = _distillation_step(model, variables, convs, learning_rate, kernel_learning_rate, steps)
        rng = np.random.default_rng(seed)
        losses: list[float] = []
        with _patched_calls(_fake_quantised_relu6(model) + _fake_quantised_kernels(convs)):
            for epoch in range(epochs):
                losses.append(_tuning_epoch(step, images, teacher, norm, rng.permutation(len(images)), batch_size))
                if on_epoch is not None:
                    on_epoch(epoch + 1, epochs, losses[-1])
        summary = {
            "rounded_layers": rounded,
            "tuned_parameters": int(sum(np.prod(v.shape) for v in variables)),
            "tuned_kernels": len(convs),
            "images": len(images),
            "epochs": epochs,
            "kl_first_epoch": losses[0] if losses else None,
            "kl_last_epoch": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        log.debug("int8 tuning: %s", summary)
        yield summary
    finally:
        for variable, value in saved:
            variable.assign(value)


def _round_kernels(model: Any, calibration: np.ndarray) -> int:
    """Every kernel rounded to its int8 grid by GPTQ on the Hessians of ``calibration``; how many were rounded."""
    import keras

    rounded = 0
    for target, hessian in hessians(model, calibration):
        kernel = np.asarray(target.conv.kernel)
        depthwise = isinstance(target.conv, keras.layers.DepthwiseConv2D)
        target.conv.kernel.assign(gptq_kernel(kernel, target.fold, depthwise, hessian))
        rounded += 1
    return rounded


def _distillation_step(
    model: Any, variables: list[Any], convs: list[Any], learning_rate: float, kernel_learning_rate: float, steps: int
) -> Callable[[Any, Any], Any]:
    """One step that moves ``variables`` (and the kernels of ``convs``, at their own rate) towards the float model's
    predictions: the KL divergence of the model's output from them, each rate on a cosine decay over ``steps``."""
    import keras
    import tensorflow as tf

    handles = [getattr(v, "value", v) for v in variables]
    kernels = [getattr(layer.kernel, "value", layer.kernel) for layer in convs]
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    if kernels:
        kernel_optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(kernel_learning_rate, steps))

    @tf.function
    def step(x: Any, p: Any) -> Any:
        with tf.GradientTape() as tape:
            q = _as_distribution(model(x, training=False))
            t = _as_distribution(p)
            loss = tf.reduce_mean(tf.reduce_sum(t * (tf.math.log(t + 1e-8) - tf.math.log(q + 1e-8)), axis=-1))
        grads = tape.gradient(loss, handles + kernels)
        optimizer.apply_gradients(zip(grads[: len(handles)], handles))
        if kernels:
            kernel_optimizer.apply_gradients(zip(grads[len(handles) :], kernels))
        return loss

    return step


def _tuning_epoch(
    step: Callable[[Any, Any], Any],
    images: np.ndarray,
    teacher: np.ndarray,
    norm: Callable[[np.ndarray], np.ndarray],
    order: np.ndarray,
    batch_size: int,
) -> float:
    """One pass over ``images`` in ``order``, a batch at a time (rows read in file order); the mean loss."""
    import tensorflow as tf

    total = 0.0
    for start in range(0, len(images), batch_size):
        idx = np.sort(order[start : start + batch_size])
        total += float(step(tf.constant(norm(images[idx])), tf.constant(teacher[idx]))) * len(idx)
    return total / len(images)
