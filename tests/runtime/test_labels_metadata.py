from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from edgecls.errors import LabelsError, ModelError
from edgecls.model.labels import find_labels, fit_labels, parse_labels, read_labels_file
from edgecls.model.manifest import embed_manifest
from edgecls.model.metadata import MANIFEST_NAME, check_model_file, flatbuffer_bytes


def test_plain_and_coral_id_label_files():
    assert parse_labels("cat\ndog\n\n") == ["cat", "dog"]
    assert parse_labels("0  background\n1 tench, Tinca tinca\n") == {0: "background", 1: "tench, Tinca tinca"}
    assert parse_labels("0: cat\n2: dog") == {0: "cat", 2: "dog"}
    assert parse_labels("1 euro coin\n2 euro coin\nbutton") == ["1 euro coin", "2 euro coin", "button"]
    with pytest.raises(LabelsError, match="no labels"):
        parse_labels("\n\n")


def test_fit_labels_checks_counts_and_accepts_the_imagenet_background_convention():
    assert fit_labels(["a", "b"], 2, source="x").names == ("a", "b")
    thousand = [f"c{i}" for i in range(1000)]
    fitted = fit_labels(thousand, 1001, source="x")
    assert fitted.names[0] == "background" and fitted.names[286] == "c285"
    assert fit_labels(["background", *thousand], 1000, source="x").names[0] == "c0"
    assert fit_labels({0: "a", 2: "c"}, 3, source="x").names == ("a", "1", "c")
    with pytest.raises(LabelsError, match="have 3 entries but the model has 5 classes"):
        fit_labels(["a", "b", "c"], 5, source="labels.txt")
    with pytest.raises(LabelsError, match="id 7"):
        fit_labels({7: "x"}, 3, source="x")


def test_label_file_errors(tmp_path):
    with pytest.raises(LabelsError, match="not found"):
        read_labels_file(tmp_path / "missing.txt")
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(LabelsError, match="UTF-8"):
        read_labels_file(binary)


def test_coral_model_carries_its_labels_in_tflite_metadata(coral):
    info = check_model_file(coral / "mobilenet_v2_1.0_224_quant.tflite")
    assert "imagenet_labels.txt" in info.associated_files and info.manifest is None and not info.has_edgetpu_op()
    labels = find_labels(info, 1001)
    assert labels is not None and labels.source.startswith("TFLite metadata")
    assert labels[286] == "Egyptian cat"


def test_label_sources_first_found_wins(coral, tmp_path):
    model = tmp_path / "m.tflite"
    shutil.copy(coral / "mobilenet_v1_0.25_128_quant.tflite", model)
    (tmp_path / "labels.txt").write_text("\n".join(f"side{i}" for i in range(1001)))
    info = check_model_file(model)
    assert find_labels(info, 1001).source.startswith("TFLite metadata")  # metadata beats the sidecar
    explicit = tmp_path / "mine.txt"
    explicit.write_text("\n".join(f"mine{i}" for i in range(1001)))
    assert find_labels(info, 1001, explicit)[3] == "mine3"
    # A model with the metadata stripped falls back to the sidecar file.
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(flatbuffer_bytes(model.read_bytes()))
    assert find_labels(check_model_file(bare), 1001).names[1] == "side1"
    # The manifest beats the metadata.
    with_manifest = tmp_path / "manifest.tflite"
    with_manifest.write_bytes(embed_manifest(model.read_bytes(), {}, labels=[f"m{i}" for i in range(1001)]))
    assert find_labels(check_model_file(with_manifest), 1001).source == "edgecls manifest"


def test_embedding_a_manifest_keeps_existing_metadata_and_the_graph(coral, tmp_path):
    original = (coral / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    updated = embed_manifest(original, {"preprocess": {"resize": "center-crop"}}, labels=["a"] * 1001)
    assert flatbuffer_bytes(updated) == flatbuffer_bytes(original)
    path = tmp_path / "m.tflite"
    path.write_bytes(updated)
    info = check_model_file(path)
    assert set(info.associated_files) == {"imagenet_labels.txt", MANIFEST_NAME, "labels.txt"}
    assert info.manifest["preprocess"] == {"resize": "center-crop"}
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read(MANIFEST_NAME))["format"] == "edgecls-manifest"
    # embedding twice replaces, it does not pile up archives
    again = embed_manifest(updated, {"preprocess": {}}, labels=["b"] * 1001)
    assert len(again) < len(updated) + 2000 and flatbuffer_bytes(again) == flatbuffer_bytes(original)


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"", "not a TFLite model"), (b"PK\x03\x04 just a zip", "not a TFLite model")],
)
def test_model_file_errors(tmp_path, content, message):
    path = tmp_path / "model.tflite"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        check_model_file(path)


def test_directory_and_broken_manifest(tmp_path, coral):
    with pytest.raises(ModelError, match="directory"):
        check_model_file(tmp_path)
    bad = tmp_path / "bad.tflite"
    raw = flatbuffer_bytes((coral / "mobilenet_v1_0.25_128_quant.tflite").read_bytes())
    from edgecls.model.metadata import embed_files

    bad.write_bytes(embed_files(raw, {MANIFEST_NAME: b"{not json"}))
    with pytest.raises(ModelError, match="not valid JSON"):
        check_model_file(bad)


def test_edgetpu_models_are_recognised(coral):
    assert check_model_file(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite").has_edgetpu_op()
    assert not check_model_file(coral / "mobilenet_v1_0.25_128_quant.tflite").has_edgetpu_op()


def _damaged_metadata(coral, path):  # type: ignore[no-untyped-def]
    """The Coral model with its labels in a metadata zip whose deflated data is damaged (the zip itself opens)."""
    import io

    labels = "\n".join(f"label{i}" for i in range(1001)).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.txt", labels)
    data = bytearray(buffer.getvalue())
    start = 30 + len("labels.txt")  # the local header, then the compressed bytes
    for i in range(start + 5, start + 40):
        data[i] ^= 0x55
    path.write_bytes(flatbuffer_bytes((coral / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()) + bytes(data))
    return path


def test_a_damaged_metadata_zip_is_reported_once(coral, tmp_path):
    """`edgecls info` reads the file, then its classifier reads it again: one warning, not two (and no labels)."""
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    model = _damaged_metadata(coral, tmp_path / "damaged.tflite")
    result = CliRunner().invoke(app, ["info", str(model)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "metadata entry 'labels.txt' cannot be read" in warnings[0], result.stderr
    assert "labels    none found" in result.stdout


def test_a_metadata_warning_is_given_once_per_file_and_again_for_a_changed_one(coral, tmp_path, caplog):
    import os

    model = _damaged_metadata(coral, tmp_path / "damaged.tflite")
    with caplog.at_level("WARNING", logger="edgecls.model.metadata"):
        for _ in range(3):
            assert "labels.txt" not in check_model_file(model).associated_files
        assert len(caplog.records) == 1
        os.utime(model, ns=(0, 10**9))  # the file changed (a copy of a fixed model would have): say it again
        check_model_file(model)
        assert len(caplog.records) == 2
