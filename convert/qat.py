"""Quantisation-aware training (`edgecls convert --qat`): fine-tune with fake quantisation, export full int8.

Post-training quantisation rounds a model that never saw rounding; when that costs more than `--max-drop`, training a
few epochs with the rounding simulated (TensorFlow Model Optimization's fake-quant wrappers) lets the weights adapt.
The toolkit works on tf_keras models, so the trained Keras 3 model is rebuilt layer for layer with tf_keras (the same
builders, see `models.built_with`), its weights copied, wrapped, fine-tuned and converted. Needs the ``qat`` extra.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, ConversionError

from .data import Dataset
from .models import QAT_ARCHS, ModelSpec, built_with, create_model
from .tflite_export import run_converter, set_full_int8

# Layers the toolkit's default registry quantises; the rest (Rescaling: the in-model normalisation) stay float in
# training and are quantised by the converter from the calibration set, like any post-training op.
_QUANTIZABLE = (
    "Conv2D",
    "DepthwiseConv2D",
    "Dense",
    "BatchNormalization",
    "ReLU",
    "Activation",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "Flatten",
    "Dropout",
    "Reshape",
    "Concatenate",
    "Add",
    "ZeroPadding2D",
)


def import_toolkit() -> tuple[Any, Any]:
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError:
        raise ConfigError(
            "--qat needs the quantisation-aware training extra (tf-keras and tensorflow-model-optimization): "
            "pip install 'edgecls[qat]'"
        ) from None
    return tf_keras, tfmot


def qat_model(model: Any, arch: str, spec: ModelSpec) -> Any:
    """The trained Keras 3 ``model`` rebuilt with tf_keras, its weights copied, wrapped for quantisation-aware training."""
    if arch not in QAT_ARCHS:
        raise ConfigError(
            f"--qat supports {', '.join(QAT_ARCHS)} (received --arch {arch}): MobileNetV3's hard-swish and "
            "squeeze-excite blocks are not in the toolkit's registry"
        )
    tf_keras, tfmot = import_toolkit()
    with built_with(tf_keras):
        # The MobileNets are rebuilt flat (the base's layers inline): the toolkit cannot wrap a nested model.
        twin = create_model(arch, replace(spec, weights="none", flat=True))
    _copy_weights(model, twin, arch)
    if arch.startswith("mobilenet"):
        # As in the float fine-tuning (training._unfreeze_top), BatchNorm keeps the pretrained statistics: small
        # batches of a small dataset would drag them away (measured: 6.5 points lost on flowers128 without this).
        for layer in twin.layers:
            if type(layer).__name__ == "BatchNormalization":
                layer.trainable = False
    quantize = tfmot.quantization.keras

    def annotate(layer: Any) -> Any:
        if type(layer).__name__ in _QUANTIZABLE:
            return quantize.quantize_annotate_layer(layer)
        return layer

    annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
    annotated.set_weights(twin.get_weights())
    with quantize.quantize_scope():
        return quantize.quantize_apply(annotated)


def _layers(model: Any) -> list[Any]:
    """Layers that hold weights, with nested models (a MobileNet base) expanded in place, in graph order."""
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out += _layers(layer)
        elif layer.get_weights():
            out.append(layer)
    return out


def _copy_weights(source: Any, twin: Any, arch: str) -> None:
    """Copy layer by layer (not model.get_weights(): frozen layers put their weights in another order)."""
    src, dst = _layers(source), _layers(twin)
    shapes = lambda layers: [[w.shape for w in layer.get_weights()] for layer in layers]
    if shapes(src) != shapes(dst):
        raise ConversionError(f"cannot rebuild {arch} with tf_keras for --qat: the layers do not line up")
    for a, b in zip(src, dst):
        b.set_weights(a.get_weights())


def finetune(
    qmodel: Any,
    dataset: Dataset,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    sigmoid: bool,
    augment: float,
    seed: int,
    observer: Any,
) -> dict[str, list[float]]:
    """Fine-tune the fake-quantised model (tf.data pipeline as in training, augmentation included)."""
    import tf_keras

    from .training import TrainConfig, make_datasets

    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, augment=augment, seed=seed)
    train_ds, val_ds = make_datasets(dataset, config, sigmoid)
    loss = tf_keras.losses.BinaryCrossentropy() if sigmoid else tf_keras.losses.CategoricalCrossentropy()
    qmodel.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])

    class Report(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            observer.epoch("qat", epoch + 1, epochs, {k: float(v) for k, v in (logs or {}).items()})

    observer.stage("qat", epochs)
    fit = qmodel.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=[Report()])
    return {k: [float(v) for v in fit.history.get(k, [])] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}


def to_int8(qmodel: Any, *, io_type: str, representative: np.ndarray) -> bytes:
    """Convert the quantisation-aware model to a full-integer int8 TFLite model with a static batch-1 input."""
    import tensorflow as tf
    import tf_keras

    inputs = tf_keras.Input(batch_shape=(1, *qmodel.input_shape[1:]), name="image")
    converter = tf.lite.TFLiteConverter.from_keras_model(tf_keras.Model(inputs, qmodel(inputs)))
    set_full_int8(converter, representative, io_type)
    return run_converter(converter, "int8")
