"""Int8 tuning (edgecls.convert.int8tune): its rounding stays on the converter's grid and beats rounding to nearest, the
tuned int8 model is closer to the float model than bias correction alone, and the float model comes back."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tensorflow_or_skip
from test_biascorrect import _images, _model, _run

pytestmark = pytest.mark.slow  # trains or converts real models


@pytest.fixture(scope="module", autouse=True)
def _tf():
    tensorflow_or_skip()


def test_gptq_kernels_are_on_the_converters_grid_and_cut_the_output_error():
    import keras
    from edgecls.convert.biascorrect import _conv, quantize_kernel
    from edgecls.convert.int8tune import gptq_kernel, hessians

    calibration, held_out = _images(64, 0), _images(64, 7)
    model = _model(calibration)
    found = hessians(model, calibration)
    assert [t.conv.name for t, _ in found] == ["c1", "dw", "c3"]
    for target, hessian in found:
        kernel = np.asarray(target.conv.kernel)
        depthwise = isinstance(target.conv, keras.layers.DepthwiseConv2D)
        ours = gptq_kernel(kernel, target.fold, depthwise, hessian)
        # On the grid: rounding it again (as the converter does; test_biascorrect checks that model against the
        # converter's stored int8 kernels) changes nothing, and every channel keeps its largest level at 127.
        np.testing.assert_allclose(quantize_kernel(ours, target.fold, depthwise), ours, rtol=1e-5, atol=1e-9)
        axes = (0, 1) if depthwise else (0, 1, 2)
        folded = ours * (target.fold.reshape(1, 1, -1, 1) if depthwise else target.fold.reshape(1, 1, 1, -1))
        original = kernel * (target.fold.reshape(1, 1, -1, 1) if depthwise else target.fold.reshape(1, 1, 1, -1))
        np.testing.assert_allclose(np.abs(folded).max(axis=axes), np.abs(original).max(axis=axes), rtol=1e-5)
        # Less output error than rounding to nearest, on images the Hessian never saw.
        inputs = keras.Model(model.inputs, target.conv.input).predict(held_out, verbose=0)
        nearest = quantize_kernel(kernel, target.fold, depthwise)
        err_nearest = float(np.square(np.asarray(_conv(target.conv, inputs, nearest - kernel))).mean())
        err_ours = float(np.square(np.asarray(_conv(target.conv, inputs, ours - kernel))).mean())
        assert err_ours < 0.8 * err_nearest, (target.conv.name, err_nearest, err_ours)


def _flower_images(flowers, size: int, n: int) -> np.ndarray:
    from PIL import Image

    files = sorted(p for c in sorted(flowers.iterdir()) if c.is_dir() for p in sorted(c.iterdir())[: n // 5 + 1])
    np.random.default_rng(0).shuffle(files)
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in files[:n]]).astype(
        np.float32
    )


def test_tuning_brings_a_real_mobilenet_closer_to_float_than_bias_correction(flowers):
    """The shared ImageNet MobileNet V1 0.25 (its BatchNorms fold into kernels whose channels differ 10,000-fold in
    scale, the case that needs this) with a fixed random 10-class head, on real flower photos."""
    import keras
    from conftest import WEIGHTS, require
    from edgecls.convert.int8tune import tuned_for_int8
    from edgecls.convert.tflite_export import to_tflite

    weights = require(WEIGHTS / "mobilenet_v1_0.25_224_no_top.h5", "MobileNet V1 0.25 ImageNet weights")
    x = _flower_images(flowers, 96, 288)
    calibration, tuning, test = x[:64], x[64:224], x[224:]
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, include_top=False, weights=str(weights))
    inputs = keras.Input((96, 96, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)))
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(10)(features)))
    reference = model.predict(test, verbose=0)
    weights_before = [w.copy() for w in model.get_weights()]
    corrected = _run(to_tflite(model, mode="int8", representative=calibration), test)
    epochs_seen = []
    with tuned_for_int8(
        model, calibration, tuning, epochs=4, on_epoch=lambda e, n, kl: epochs_seen.append((e, n, kl))
    ) as summary:
        flat = to_tflite(model, mode="int8", representative=calibration, bias_correction=False)
    tuned = _run(flat, test)
    # The float model comes back exactly as it was.
    for before, after in zip(weights_before, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert [e for e, _, _ in epochs_seen] == [1, 2, 3, 4]
    assert summary["rounded_layers"] == 27 and summary["tuned_kernels"] == 27 and summary["images"] == 160
    assert summary["kl_last_epoch"] < summary["kl_first_epoch"]
    err_corrected = float(np.abs(corrected - reference).mean())
    err_tuned = float(np.abs(tuned - reference).mean())
    assert err_tuned < 0.9 * err_corrected, (err_corrected, err_tuned)  # measured: 0.78
