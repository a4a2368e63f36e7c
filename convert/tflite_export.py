"""Export to TFLite: full-integer int8 (default), float16, dynamic-range or float; static batch-1 input."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Any

import numpy as np

from edgecls.errors import ConversionError
from edgecls.nativelog import quiet_native_stderr

from .choices import IO_TYPES, QUANT_MODES
from .compact import compact

log = logging.getLogger(__name__)


def static_batch(model: Any) -> Any:
    """The same model behind a batch-1 input, so the exported input shape is [1, H, W, C] (the Edge TPU
    compiler refuses a dynamic batch). Weights are shared, not copied."""
    import keras

    inputs = keras.Input(batch_shape=(1, *model.input_shape[1:]), name="image")
    return keras.Model(inputs, model(inputs), name=f"{model.name}_batch1")


def to_tflite(
    model: Any,
    *,
    mode: str = "int8",
    io_type: str = "int8",
    representative: np.ndarray | None = None,
    bias_correction: bool = True,
    compacted: bool = True,
) -> bytes:
    """Convert a Keras model; ``representative`` holds the calibration inputs (float32, N x H x W x C) for int8.
    int8 conversion corrects the conv biases for weight rounding (edgecls.convert.biascorrect) unless ``bias_correction``
    is False; the float model is left as it was. ``compacted=False`` returns the converter's bytes as they are."""
    import tensorflow as tf

    if mode not in QUANT_MODES:
        raise ConversionError(f"quantisation {mode!r} is not one of {', '.join(QUANT_MODES)}")
    if io_type not in IO_TYPES:
        raise ConversionError(f"--io {io_type!r} is not one of {', '.join(IO_TYPES)}")
    if mode == "int8" and (representative is None or len(representative) == 0):
        raise ConversionError("int8 quantisation needs calibration images (the representative dataset is empty)")
    correction: Any = contextlib.nullcontext()
    if mode == "int8" and bias_correction:
        from .biascorrect import corrected_biases

        correction = corrected_biases(model, np.asarray(representative, dtype=np.float32))
    with correction:  # the converter reads the (corrected) variables when it runs
        converter = tf.lite.TFLiteConverter.from_keras_model(static_batch(model))
        if mode == "int8":
            set_full_int8(converter, representative, io_type)
        elif mode == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return run_converter(converter, mode, compacted=compacted)


def set_full_int8(converter: Any, representative: np.ndarray, io_type: str) -> None:
    """Full-integer int8: calibrated on ``representative`` (float32, N x H x W x C), builtin int8 ops only."""
    import tensorflow as tf

    samples = representative.astype(np.float32)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(len(samples)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8 if io_type == "uint8" else tf.int8
    converter.inference_output_type = tf.uint8 if io_type == "uint8" else tf.int8


def run_converter(converter: Any, mode: str, *, compacted: bool = True) -> bytes:
    """Run a configured TFLiteConverter quietly; failures become one ConversionError, int8 output is checked. The
    bytes come back compacted (edgecls.convert.compact: the same model, smaller) unless ``compacted`` is False."""
    chatter = io.StringIO()
    native: list[str] = []
    try:
        # The converter prints its SavedModel signature to stdout and its diagnostics to fd 2; the diagnostics
        # that matter come back in the exception, so both streams go to the debug log.
        with (
            contextlib.redirect_stdout(chatter),
            quiet_native_stderr(replay=False) as native,
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises many types; all mean the same to the user
        if "KeyboardInterrupt" in f"{type(exc).__name__} {exc}":  # Ctrl-C inside the converter comes back wrapped
            raise KeyboardInterrupt from None
        raise ConversionError(_explain(exc, mode)) from None
    finally:
        log.debug("converter output:\n%s\n%s", chatter.getvalue(), "\n".join(native))
    if mode == "int8":
        check_fully_quantized(flatbuffer)
    return compact(bytes(flatbuffer)) if compacted else bytes(flatbuffer)


def _explain(exc: Exception, mode: str) -> str:
    text = str(exc)
    ops = sorted(set(re.findall(r"'(tfl?\.[A-Za-z0-9_]+)' op", text)))
    if ops:
        needs = "int8 TFLite kernel" if mode == "int8" else "TFLite builtin kernel"
        return (
            f"the model cannot be converted: op(s) {', '.join(ops)} have no {needs}; replace the layers that use "
            "them" + (", or use --quant dynamic|float16" if mode == "int8" else "")
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else type(exc).__name__)
    return f"TFLite conversion failed ({first[:300]})"


def check_fully_quantized(flatbuffer: bytes) -> None:
    """Raise ConversionError naming the first op that still computes in float32."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    float_ops = [
        op
        for op in interpreter._get_ops_details()
        if any(i >= 0 and dtypes.get(i) == "float32" for i in list(op["inputs"]) + list(op["outputs"]))
    ]
    # (De)quantize ops only surround the culprit: name the op that really computes in float.
    culprits = [op for op in float_ops if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")] or float_ops
    if culprits:
        op = culprits[0]
        raise ConversionError(
            f"the int8 model is not fully quantised: op {op['op_name']} (#{op['index']}) has no int8 kernel and "
            "computes in float32, so it cannot run on int8-only hardware such as the Edge TPU; replace the layer "
            "that uses it, or use --quant dynamic|float16"
        )
