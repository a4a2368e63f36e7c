"""Standard TFLite metadata in the models convert writes, as Coral and Model Maker models carry it, so that other
runtimes (MediaPipe Tasks' ImageClassifier, TFLite Support, Android Studio's model binding) read them: the model's
name and description, the input image (colour space, size, the normalisation it expects of its pixels, their
range), the output scores, and the labels as an associated file of the output tensor.

The metadata is a flatbuffer of the TFLite metadata schema (file identifier "M001", written here with the
`flatbuffers` builder, field by field as the schema declares them), stored in a model buffer named
"TFLITE_METADATA"; the associated files themselves go in the zip appended to the model (`edgecls.model.manifest`), beside
our own manifest, uncompressed, as that schema's readers require.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"

# the schema's enum and union values
_COLOR_SPACE = {"rgb": 1, "grayscale": 2}
_IMAGE_PROPERTIES, _FEATURE_PROPERTIES = 2, 1  # ContentProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType


@dataclass(frozen=True)
class ModelDescription:
    """What the metadata says: ``mean``/``std`` are what the model expects of 0..255 pixels (0 and 1 for ours, which
    normalise inside); ``labels`` are attached to the output when it has one score per label."""

    name: str
    description: str
    version: str
    width: int
    height: int
    color: str
    labels: tuple[str, ...]
    scores: int  # values in the output tensor
    mean: tuple[float, ...] = (0.0,)  # one value, or one per channel
    std: tuple[float, ...] = (1.0,)


def metadata_flatbuffer(model: ModelDescription) -> bytes:
    """The ModelMetadata flatbuffer for ``model``: one subgraph of one input (the image) and one output (the scores,
    with the labels file when there is one label per score). A flatbuffer is written from the leaves up, so every
    object is built before the table that points to it."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    w = _Writer(b)
    input_tensor, output_tensor = _input_metadata(w, model), _output_metadata(w, model)
    # SubGraphMetadata: input_tensor_metadata 2, output_tensor_metadata 3
    inputs, outputs = w.offsets([input_tensor]), w.offsets([output_tensor])
    subgraph = w.table([(2, "offset", inputs), (3, "offset", outputs)], 10)
    # ModelMetadata: name 0, description 1, version 2, subgraph_metadata 3, author 4, min_parser_version 7
    name, description, version = (
        b.CreateString(model.name),
        b.CreateString(model.description),
        b.CreateString(model.version),
    )
    author, parser = b.CreateString("edgecls"), b.CreateString(MIN_PARSER_VERSION)
    subgraphs = w.offsets([subgraph])
    root = w.table(
        [
            (0, "offset", name),
            (1, "offset", description),
            (2, "offset", version),
            (3, "offset", subgraphs),
            (4, "offset", author),
            (7, "offset", parser),
        ],
        8,
    )
    b.Finish(root, file_identifier=IDENTIFIER)
    return bytes(b.Output())


def _input_metadata(w: _Writer, model: ModelDescription) -> int:
    """The input image's TensorMetadata (name 0, description 1, content 3, process_units 4, stats 5):
    ImageProperties (color_space 0, default_size 1), NormalizationOptions (mean 0, std 1) and the range the
    normalised pixels take."""
    b = w.builder
    channels = 1 if model.color == "grayscale" else 3
    size = w.table([(0, "uint", model.width), (1, "uint", model.height)], 2)
    image = w.table([(0, "byte", _COLOR_SPACE[model.color]), (1, "offset", size)], 2)
    image_content = w.table([(0, "byte", _IMAGE_PROPERTIES), (1, "offset", image)], 3)
    means = list(model.mean) if len(model.mean) == channels else [model.mean[0]] * channels
    stds = list(model.std) if len(model.std) == channels else [model.std[0]] * channels
    mean, std = w.floats(means), w.floats(stds)
    normalization = w.table([(0, "offset", mean), (1, "offset", std)], 2)
    unit = w.table([(0, "byte", _NORMALIZATION_OPTIONS), (1, "offset", normalization)], 2)
    low, high = min((0.0 - m) / d for m, d in zip(means, stds)), max((255.0 - m) / d for m, d in zip(means, stds))
    input_name, input_text = (
        b.CreateString("image"),
        b.CreateString(
            f"A {model.width}x{model.height} {model.color.upper() if model.color == 'rgb' else model.color} image, "
            "pixels 0..255"
            + ("; the model normalises them itself" if set(means) == {0.0} and set(stds) == {1.0} else "")
        ),
    )
    return w.table(
        [
            (0, "offset", input_name),
            (1, "offset", input_text),
            (3, "offset", image_content),
            (4, "offset", w.offsets([unit])),
            (5, "offset", w.stats(low, high)),
        ],
        7,
    )


def _output_metadata(w: _Writer, model: ModelDescription) -> int:
    """The output scores' TensorMetadata (name 0, description 1, content 3, stats 5, associated_files 6):
    FeatureProperties, probabilities in 0..1, and the labels file (AssociatedFile: name 0, description 1, type 2)."""
    b = w.builder
    files: list[int] = []
    if model.labels and len(model.labels) == model.scores:
        file_name, file_text = b.CreateString(LABELS_FILE), b.CreateString("The class of each score, one per line.")
        files.append(w.table([(0, "offset", file_name), (1, "offset", file_text), (2, "byte", _TENSOR_AXIS_LABELS)], 5))
    b.StartObject(0)
    features = b.EndObject()
    score_content = w.table([(0, "byte", _FEATURE_PROPERTIES), (1, "offset", features)], 3)
    output_name = b.CreateString("probability")
    output_text = b.CreateString(
        "The probability of each class."
        if model.scores > 1
        else f"The probability of class {model.labels[1] if len(model.labels) > 1 else 1}."
    )
    output_fields = [
        (0, "offset", output_name),
        (1, "offset", output_text),
        (3, "offset", score_content),
        (5, "offset", w.stats(0.0, 1.0)),
    ]
    if files:
        output_fields.append((6, "offset", w.offsets(files)))
    return w.table(output_fields, 7)


class _Writer:
    """The few flatbuffer shapes the metadata is made of, written with one `flatbuffers.Builder`."""

    def __init__(self, builder: Any) -> None:
        self.builder = builder

    def table(self, fields: list[tuple[int, str, Any]], slots: int) -> int:
        """One table; ``fields`` are (slot, kind, value) with kind "offset", "byte" or "uint"."""
        b = self.builder
        b.StartObject(slots)
        for slot, kind, value in fields:
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                b.PrependInt8Slot(slot, value, 0)
            else:
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    def offsets(self, items: list[int]) -> int:
        b = self.builder
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def floats(self, values: list[float]) -> int:
        b = self.builder
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependFloat32(value)
        return b.EndVector()

    def stats(self, low: float, high: float) -> int:
        """Stats: max 0, min 1."""
        most, least = self.floats([high]), self.floats([low])
        return self.table([(0, "offset", most), (1, "offset", least)], 2)


def with_metadata(flat: bytes, metadata: bytes) -> bytes:
    """The model flatbuffer ``flat`` (no appended zip) with ``metadata`` stored as its TFLITE_METADATA buffer (an
    earlier one is replaced)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flat, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _text(m.name) != METADATA_NAME]
    model.metadata = [*kept, entry]
    builder = flatbuffers.Builder(len(flat) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _text(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
