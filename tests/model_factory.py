"""Build small real TFLite classifiers with TensorFlow for the runtime tests.

Each model is trained for a few steps on a trivially separable synthetic task (the mean colour of the image), so
its predictions are known in advance and the tests can check that preprocessing and quantisation are right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _data(n: int, size: int, channels: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is given by brightness band (grayscale) or by the dominant channel (RGB)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 40, (n, size, size, channels)).astype(np.float32)
    for i, label in enumerate(y):
        if channels == 1:
            x[i] += 40 + 180 * label / max(1, classes - 1)
        else:
            x[i, ..., label % 3] += 200
    return np.clip(x, 0, 255), y


def _model(tf, size: int, channels: int, classes: int, head: str, rescale: bool):  # type: ignore[no-untyped-def]
    keras = tf.keras
    inputs = keras.Input((size, size, channels), batch_size=1)
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescale else inputs
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if head == "sigmoid":
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        loss = "binary_crossentropy"
    else:
        outputs = keras.layers.Dense(classes, activation=None if head == "logits" else "softmax")(x)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=head == "logits")
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    return model


def _train_and_convert(tf, model, x, y, *, quant: str | None, io: str | None) -> bytes:  # type: ignore[no-untyped-def]
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[i : i + 1]] for i in range(min(64, len(x))))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io:
            converter.inference_input_type = getattr(tf, io)
            converter.inference_output_type = getattr(tf, io)
    return converter.convert()


SPECS = {
    # name: (size, channels, classes, head, rescale-in-model, quantisation, io type)
    "float_rgb_softmax": (16, 3, 3, "softmax", False, None, None),
    "int8_gray_softmax": (16, 1, 4, "softmax", True, "int8", "int8"),
    "uint8_rgb_sigmoid": (16, 3, 2, "sigmoid", True, "int8", "uint8"),
    "int8_rgb_logits": (16, 3, 3, "logits", True, "int8", "int8"),
}


def build_all(out_dir: Path) -> dict[str, Path]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    paths = {}
    for name, (size, channels, classes, head, rescale, quant, io) in SPECS.items():
        x, y = _data(256, size, channels, classes)
        # float model without Rescaling: the runtime's default float normalisation maps pixels to [-1, 1].
        train_x = x if rescale else (x - 127.5) / 127.5
        model = _model(tf, size, channels, classes, head, rescale)
        if not rescale:
            model.fit(train_x, y, epochs=30, batch_size=32, verbose=0)
            flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        else:
            flat = _train_and_convert(tf, model, x, y, quant=quant, io=io)
        path = out_dir / f"{name}.tflite"
        path.write_bytes(flat)
        paths[name] = path
    return paths


def sample(name: str, label: int, seed: int = 1) -> np.ndarray:
    """One uint8 test image of class ``label`` for the model ``name``."""
    size, channels, classes, *_ = SPECS[name]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (size * 4, size * 4, channels)).astype(np.float32)  # larger than the model: resized
    if channels == 1:
        x += 40 + 180 * label / max(1, classes - 1)
    else:
        x[..., label % 3] += 200
    img = np.clip(x, 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


def build_edgetpu_cases(out_dir: Path) -> dict[str, Path]:
    """Untrained models for the Edge TPU pre-flight, each with one precise problem (or none).

    ``ok``: full int8, static batch 1. ``float_io``: int8 inside, float input and output (boundary QUANTIZE and
    DEQUANTIZE). ``float``: not quantised. ``dynamic``: int8 with a dynamic batch. ``leaky_relu``: an op the Edge
    TPU lacks, in the middle. ``dilation``: a CONV_2D whose x and y dilation differ.
    """
    import tensorflow as tf

    keras = tf.keras
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 255, (16, 16, 16, 3)).astype(np.float32)

    def net(middle: str = "relu", batch: int | None = 1, dilation: tuple[int, int] = (1, 1)):  # type: ignore[no-untyped-def]
        inputs = keras.Input((16, 16, 3), batch_size=batch)
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(8, 3, padding="same", dilation_rate=dilation)(x)
        x = keras.layers.LeakyReLU(0.1)(x) if middle == "leaky" else keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))

    def convert(model, quant: bool = True, io: str | None = "int8") -> bytes:  # type: ignore[no-untyped-def]
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quant:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io:
                converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
        return converter.convert()

    tf.keras.utils.set_random_seed(0)
    cases = {
        "ok": convert(net()),
        "float_io": convert(net(), io=None),
        "float": convert(net(), quant=False),
        "dynamic": convert(net(batch=None)),
        "leaky_relu": convert(net("leaky")),
        "dilation": convert(net(dilation=(2, 1))),
    }
    paths = {}
    for name, flat in cases.items():
        paths[name] = out_dir / f"edgetpu_{name}.tflite"
        paths[name].write_bytes(flat)
    return paths


def build_non_classifiers(out_dir: Path) -> dict[str, Path]:
    """Valid float TFLite models that are not image classifiers (untrained; only their shapes matter):
    ``segmentation`` (a score map per pixel, as DeepLab), ``pose`` (17 keypoints x 3, as MoveNet), ``sequence``
    (an LSTM over [1, 10, 8]), ``detector`` (four outputs, as SSD)."""
    import tensorflow as tf

    keras = tf.keras
    tf.keras.utils.set_random_seed(0)

    def image_input():  # type: ignore[no-untyped-def]
        return keras.Input((32, 32, 3), batch_size=1)

    def segmentation():  # type: ignore[no-untyped-def]
        inputs = image_input()
        return keras.Model(inputs, keras.layers.Conv2D(5, 3, padding="same", activation="softmax")(inputs))

    def pose():  # type: ignore[no-untyped-def]
        inputs = image_input()
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
        return keras.Model(inputs, keras.layers.Reshape((1, 17, 3))(keras.layers.Dense(51)(x)))

    def sequence():  # type: ignore[no-untyped-def]
        inputs = keras.Input((10, 8), batch_size=1)
        return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.LSTM(4)(inputs)))

    def detector():  # type: ignore[no-untyped-def]
        inputs = image_input()
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
        return keras.Model(
            inputs,
            [
                keras.layers.Reshape((10, 4))(keras.layers.Dense(40)(x)),
                keras.layers.Dense(10)(x),
                keras.layers.Dense(10)(x),
                keras.layers.Dense(1)(x),
            ],
        )

    paths = {}
    for name, make in {"segmentation": segmentation, "pose": pose, "sequence": sequence, "detector": detector}.items():
        paths[name] = out_dir / f"{name}.tflite"
        paths[name].write_bytes(tf.lite.TFLiteConverter.from_keras_model(make()).convert())
    return paths
