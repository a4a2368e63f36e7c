"""Flatbuffer compaction (edgecls.convert.compact): smaller files that compute exactly what the converter's files compute."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tensorflow_or_skip

from edgecls import Classifier
from edgecls.model.flatbuffer import verify_model
from edgecls.model.metadata import flatbuffer_bytes

pytestmark = pytest.mark.slow  # trains or converts real models


@pytest.fixture(scope="module", autouse=True)
def _tf():
    tensorflow_or_skip()


def _model():  # type: ignore[no-untyped-def]
    """Conv/BN/ReLU6, two depthwise-separable blocks of equal width (equal zero-point vectors), a dense head."""
    import keras

    keras.utils.set_random_seed(1)
    layers = keras.layers
    inputs = keras.Input((24, 24, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    for _ in range(2):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
        x = layers.Conv2D(16, 1, use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def converted():  # type: ignore[no-untyped-def]
    """(raw converter bytes, compacted bytes) for each export mode of one model."""
    from edgecls.convert.tflite_export import to_tflite

    model = _model()
    calibration = np.random.default_rng(0).uniform(0, 255, (16, 24, 24, 3)).astype(np.float32)
    return {
        mode: (
            to_tflite(model, mode=mode, representative=calibration, compacted=False),
            to_tflite(model, mode=mode, representative=calibration),
        )
        for mode in ("int8", "float16", "dynamic", "none")
    }


def _outputs(flat: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flat)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    results = []
    for x in inputs:
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        results.append(it.get_tensor(out["index"]).copy())
    return results


def _tensors(flat: bytes) -> list[dict]:
    """Every tensor's type, shape and quantisation as the interpreter sees them, and its constant data."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flat, 0)
    graph = model.Subgraphs(0)
    rows = []
    for t in Interpreter(model_content=flat).get_tensor_details():
        q = t["quantization_parameters"]
        buffer = model.Buffers(graph.Tensors(t["index"]).Buffer())
        rows.append(
            {
                "index": t["index"],
                "dtype": t["dtype"],
                "shape": t["shape"].tolist(),
                "scales": q["scales"].tolist(),
                "zero_points": q["zero_points"].tolist(),
                "dim": q["quantized_dimension"],
                "name": t["name"],
                "data": buffer.DataAsNumpy().tobytes() if buffer.DataLength() else None,
            }
        )
    return rows


def _zero_point_vectors(flat: bytes) -> tuple[int, int]:
    """(quantised tensors with zero points, distinct zero-point vectors they point at)."""
    from tensorflow.lite.python import schema_py_generated as schema

    graph = schema.Model.GetRootAs(flat, 0).Subgraphs(0)
    positions = []
    for i in range(graph.TensorsLength()):
        q = graph.Tensors(i).Quantization()
        if q is not None and q.ZeroPointLength():
            positions.append(q._tab.Vector(q._tab.Offset(10)))  # field 3: zero_point
    return len(positions), len(set(positions))


@pytest.mark.parametrize("mode", ["int8", "float16", "dynamic", "none"])
def test_compacted_model_computes_exactly_what_the_converters_file_computes(converted, mode):
    raw, compacted = converted[mode]
    assert len(compacted) < len(raw)
    rng = np.random.default_rng(1)
    if mode == "int8":
        inputs = [rng.integers(-128, 128, (1, 24, 24, 3)) for _ in range(8)]
    else:
        inputs = [rng.uniform(0, 255, (1, 24, 24, 3)) for _ in range(8)]
    for a, b in zip(_outputs(raw, inputs), _outputs(compacted, inputs)):
        np.testing.assert_array_equal(a, b)
    # Same tensors, types, shapes, quantisation and constant values; only the names are shorter.
    before, after = _tensors(raw), _tensors(compacted)
    assert sum(t["data"] is not None for t in before) >= 8  # the weights are compared too
    assert [{k: v for k, v in t.items() if k != "name"} for t in before] == [
        {k: v for k, v in t.items() if k != "name"} for t in after
    ]
    for old, new in zip(before, after):
        assert old["name"].split(";")[0].endswith(new["name"]) and len(new["name"]) <= len(old["name"])
    assert any(";" in t["name"] for t in before) and not any(";" in t["name"] for t in after)


def test_equal_zero_point_vectors_are_stored_once_and_buffers_stay_aligned(converted):
    from tensorflow.lite.python import schema_py_generated as schema

    raw, compacted = converted["int8"]
    tensors, distinct = _zero_point_vectors(raw)
    assert distinct == tensors  # the converter writes one vector per tensor
    tensors_after, distinct_after = _zero_point_vectors(compacted)
    assert tensors_after == tensors and distinct_after < tensors / 2
    model = schema.Model.GetRootAs(compacted, 0)
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            assert buffer._tab.Vector(buffer._tab.Offset(4)) % 16 == 0, f"buffer {i} is not 16-byte aligned"


def test_compacted_files_pass_the_runtime_checks(converted, tmp_path):
    raw, compacted = converted["int8"]
    (tmp_path / "raw.tflite").write_bytes(raw)
    (tmp_path / "model.tflite").write_bytes(compacted)
    assert verify_model(tmp_path / "model.tflite").num_tensors == verify_model(tmp_path / "raw.tflite").num_tensors
    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    with Classifier(tmp_path / "raw.tflite") as a, Classifier(tmp_path / "model.tflite") as b:
        np.testing.assert_array_equal(a.scores(image), b.scores(image))


def test_a_third_party_model_stays_exact(coral):
    """Coral's published model (another converter, per-tensor uint8): same outputs on a real photo."""
    from edgecls.convert.compact import compact

    source = coral / "mobilenet_v1_0.25_128_quant.tflite"
    flat = flatbuffer_bytes(source.read_bytes())
    compacted = compact(flat)
    assert len(compacted) < len(flat)
    import cv2

    image = cv2.resize(cv2.imread(str(coral / "cat.bmp"))[..., ::-1], (128, 128))[None]
    np.testing.assert_array_equal(_outputs(flat, [image])[0], _outputs(compacted, [image])[0])


@pytest.mark.parametrize(
    "names, expected",
    [
        (
            [
                "serving_default_image:0",
                "model_1/inner_1/conv_1/Relu6;model_1/inner_1/bn_1/add",
                "model_1/head/MatMul",
                "StatefulPartitionedCall:0",
            ],
            ["serving_default_image:0", "inner_1/conv_1/Relu6", "head/MatMul", "StatefulPartitionedCall:0"],
        ),
        (["a/b/c", "a/b/c"], ["c", "c"]),  # the last component is never removed
        (["x", "y"], ["x", "y"]),
        ([], []),
    ],
)
def test_short_names(names, expected):
    from edgecls.convert.compact import short_names

    assert short_names(names) == expected


def test_a_file_it_cannot_read_is_returned_as_it_was():
    from edgecls.convert.compact import compact

    garbage = b"\x10\x00\x00\x00TFL3" + bytes(range(200))
    assert compact(garbage) == garbage
