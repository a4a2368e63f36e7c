"""Models that convert writes carry the standard TFLite metadata, and a third-party consumer reads them: MediaPipe
Tasks' ImageClassifier loads an edgecls model, names its classes from the model alone and ranks as the edgecls
runtime does; MediaPipe's own metadata reader shows what the metadata says. MediaPipe is an optional test
dependency (.ci/run installs it): skipped where absent, required under CI."""

from __future__ import annotations

import pytest
from conftest import IN_CI, TINY, convert, tensorflow_or_skip

pytestmark = pytest.mark.slow
CLASSES = ["circle", "square", "stripes"]


def mediapipe_or_skip():
    try:
        import mediapipe
        from mediapipe.tasks.python import vision  # noqa: F401
    except ImportError:
        message = "MediaPipe Tasks is not installed (pip install --no-deps mediapipe; see .ci/run)"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return mediapipe


@pytest.fixture(scope="module")
def model(shapes, tmp_path_factory):
    tensorflow_or_skip()
    out = tmp_path_factory.mktemp("standard") / "run"
    result = convert(shapes, "--out", out, *TINY)  # the default --io
    assert result.exit_code == 0, result.output
    return out / "model.tflite"


def test_mediapipe_classifies_an_edgecls_model_with_its_own_labels(model, shapes):
    mp = mediapipe_or_skip()
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision

    import edgecls

    options = vision.ImageClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=str(model)), max_results=3)
    images = [next((shapes / name).iterdir()) for name in CLASSES]
    with vision.ImageClassifier.create_from_options(options) as theirs, edgecls.Classifier(model) as ours:
        for path in images:
            categories = theirs.classify(mp.Image.create_from_file(str(path))).classifications[0].categories
            assert {c.category_name for c in categories} == set(CLASSES)  # named from the model's metadata
            mine = ours.classify(path, top_k=3)
            assert categories[0].category_name == mine[0].label
            assert abs(categories[0].score - mine[0].score) < 0.05  # their resize is not ours: close, not equal


def test_the_metadata_says_what_the_model_is(model):
    """Read with the metadata schema's own generated code (as MediaPipe ships it), not with ours."""
    mediapipe_or_skip()
    import zipfile

    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    from tensorflow.lite.python import schema_py_generated as tflite

    data = model.read_bytes()
    flat = tflite.Model.GetRootAsModel(data, 0)
    (entry,) = [flat.Metadata(i) for i in range(flat.MetadataLength()) if flat.Metadata(i).Name() == b"TFLITE_METADATA"]
    buffer = flat.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    metadata = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    assert metadata.name == b"edgecls compact-cnn" and b"3 classes (circle, square, stripes)" in metadata.description
    (subgraph,) = metadata.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    size = image.content.contentProperties.defaultSize
    assert (size.width, size.height) == (32, 32)
    (unit,) = image.processUnits
    assert unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert list(unit.options.mean) == [0.0] * 3 and list(unit.options.std) == [1.0] * 3
    (scores,) = subgraph.outputTensorMetadata
    (labels,) = scores.associatedFiles
    assert labels.name == b"labels.txt" and labels.type == schema.AssociatedFileType.TENSOR_AXIS_LABELS
    with zipfile.ZipFile(model) as archive:  # the associated file, stored uncompressed as the readers require
        info = archive.getinfo("labels.txt")
        assert info.compress_type == zipfile.ZIP_STORED and archive.read(info).decode().split() == CLASSES


def test_the_default_io_is_what_other_runtimes_take(model):
    import edgecls

    with edgecls.Classifier(model) as clf:
        assert clf.input_spec.dtype == "uint8" and clf.output_spec.dtype == "uint8"
