"""Bias correction of post-training int8 (edgecls.convert.biascorrect): its model of the converter's weight rounding is
the converter's, it removes the mean error that rounding adds, and it leaves the float model as it was."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tensorflow_or_skip

pytestmark = pytest.mark.slow  # trains or converts real models


@pytest.fixture(scope="module", autouse=True)
def _tf():
    tensorflow_or_skip()


def _images(n: int, seed: int) -> np.ndarray:
    """Bright, low-contrast images: every conv channel sees a large constant plus a small signal, the case where
    weight rounding shifts whole channels (what ImageNet features do on a new dataset)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(150, 200, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 12, (n, 16, 16, 3)), 0, 255).astype(np.float32)


def _model(calibration: np.ndarray):  # type: ignore[no-untyped-def]
    """Conv/BN/ReLU6, depthwise/BN/ReLU6, a conv with its own bias, pooling, a linear head. BatchNorm statistics
    are set from the data, as training leaves them."""
    import keras

    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(12, 3, padding="same", use_bias=False, name="c1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(16, 1, use_bias=True, activation="relu", name="c3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(4, name="head")(x))
    for bn_name, conv_name in (("bn1", "c1"), ("bn2", "dw")):
        probe = keras.Model(inputs, model.get_layer(conv_name).output)
        out = probe.predict(calibration, verbose=0)
        bn = model.get_layer(bn_name)
        gamma, beta, _, _ = bn.get_weights()
        bn.set_weights([gamma, beta + 1.0, out.mean((0, 1, 2)), out.var((0, 1, 2))])
    return model


def _run(flat: bytes, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flat)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s, z = inp["quantization"]
    so, zo = out["quantization"]
    rows = []
    for x in images:
        it.set_tensor(inp["index"], np.clip(np.round(x / s + z), -128, 127).astype(np.int8)[None])
        it.invoke()
        rows.append((it.get_tensor(out["index"])[0].astype(np.float32) - zo) * so)
    return np.array(rows)


def test_the_kernel_model_matches_the_converters_int8_weights():
    from ai_edge_litert.interpreter import Interpreter
    from edgecls.convert.biascorrect import _targets, quantize_kernel
    from edgecls.convert.tflite_export import to_tflite

    calibration = _images(40, 0)
    model = _model(calibration)
    flat = to_tflite(model, mode="int8", representative=calibration, bias_correction=False)
    it = Interpreter(model_content=flat)
    stored = {}
    for t in it.get_tensor_details():
        if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["quantization_parameters"]["scales"].size > 1:
            scales = t["quantization_parameters"]["scales"]
            q = it.get_tensor(t["index"]).astype(np.float32)
            axis = t["quantization_parameters"]["quantized_dimension"]
            shape = [1] * 4
            shape[axis] = -1
            stored[tuple(t["shape"])] = q * scales.reshape(shape)
    ((_container, targets),) = _targets(model)
    assert [t.conv.name for t in targets] == ["c1", "dw", "c3"]
    import keras

    for t in targets:
        kernel = np.asarray(t.conv.kernel)
        depthwise = isinstance(t.conv, keras.layers.DepthwiseConv2D)
        ours = quantize_kernel(kernel, t.fold, depthwise)
        if depthwise:  # TFLite: (1, kh, kw, channels); folded by BatchNorm
            folded = (ours * t.fold.reshape(1, 1, -1, 1))[..., 0][None]
        else:  # TFLite: (out, kh, kw, in)
            folded = np.transpose(ours * t.fold.reshape(1, 1, 1, -1), (3, 0, 1, 2))
        assert folded.shape in stored, (t.conv.name, folded.shape, list(stored))
        # The converter may also fold a constant input scale (Rescaling 1/255) into the first kernel: one scalar,
        # which per-channel rounding commutes with.
        got = stored[folded.shape]
        k = float((got * folded).sum() / (folded * folded).sum())
        assert k == pytest.approx(1 / 255 if t.conv.name == "c1" else 1.0, rel=1e-4), t.conv.name
        np.testing.assert_allclose(got, k * folded, rtol=1e-4, atol=1e-6 * np.abs(got).max())


def test_correction_removes_most_of_the_int8_mean_error_and_keeps_the_float_model():
    from edgecls.convert.tflite_export import to_tflite

    calibration, test = _images(64, 1), _images(64, 2)
    model = _model(calibration)
    reference = model.predict(test, verbose=0)
    weights_before = [w.copy() for w in model.get_weights()]
    plain = _run(to_tflite(model, mode="int8", representative=calibration, bias_correction=False), test)
    corrected = _run(to_tflite(model, mode="int8", representative=calibration), test)
    # The float model comes back exactly as it was.
    for before, after in zip(weights_before, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(model.predict(test, verbose=0), reference, rtol=1e-6)
    bias_plain = np.abs((plain - reference).mean(0)).mean()
    bias_corrected = np.abs((corrected - reference).mean(0)).mean()
    err_plain = np.abs(plain - reference).mean()
    err_corrected = np.abs(corrected - reference).mean()
    assert bias_corrected < 0.5 * bias_plain, (bias_plain, bias_corrected)
    assert err_corrected < err_plain, (err_plain, err_corrected)


def test_nested_base_and_unfoldable_convs():
    """A MobileNet-style nested base is corrected through the tensors that feed it; a conv whose output is read
    twice (no BatchNorm folding possible) and has no bias is left alone."""
    import keras
    from edgecls.convert.biascorrect import _targets, channel_errors

    layers = keras.layers
    inner_in = keras.Input((8, 8, 3))
    y = layers.Conv2D(4, 3, padding="same", use_bias=False, name="inner_conv")(inner_in)
    y = layers.BatchNormalization(name="inner_bn")(y)
    base = keras.Model(inner_in, layers.ReLU()(y), name="base")
    inputs = keras.Input((8, 8, 3))
    x = base(layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    branch = layers.Conv2D(4, 1, use_bias=False, name="twice")(x)
    x = layers.Add()([layers.BatchNormalization(name="bn_a")(branch), branch])
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    found = {t.conv.name for _, targets in _targets(model) for t in targets}
    assert found == {"inner_conv"}
    errors = channel_errors(model, _images(8, 4)[:, :8, :8, :])
    assert len(errors) == 1 and errors[0][1].shape == (4,) and np.isfinite(errors[0][1]).all()
