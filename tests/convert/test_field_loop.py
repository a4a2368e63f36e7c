"""The loop from the device back to a better model, end to end on generated frames: train a model, run it over a
"camera" with --collect, have a person move the collected frames to their true class, and convert again with
--extra-data. The extra frames join the training split only, so both runs are measured on the same test images."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY, convert, invoke, one_error_line, tensorflow_or_skip

pytestmark = pytest.mark.slow
CLASSES = ("circle", "square", "stripes")


@pytest.fixture(scope="module")
def first_model(shapes, tmp_path_factory):
    tensorflow_or_skip()
    out = tmp_path_factory.mktemp("loop") / "run1"
    result = convert(shapes, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_collect_relabel_convert(first_model, shapes, tmp_path):
    from edgecls.live.demo import write_demo_dataset

    # the camera: new frames of the same classes, at another size, named so that their order is their sequence
    raw = write_demo_dataset(tmp_path / "raw", per_class=8, size=48, seed=11, classes=CLASSES)
    camera = tmp_path / "camera"
    camera.mkdir()
    truth = []
    for path in sorted(raw.rglob("*.png")):
        truth.append(path.parent.name)
        shutil.copy(path, camera / f"{len(truth) - 1:03d}.png")

    field = tmp_path / "field"
    result = invoke(
        "run",
        first_model / "model.tflite",
        "--source",
        camera,
        "-q",
        "--collect",
        field,
        "--collect-every",
        "0",
        "--collect-sample",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert f"collected {len(truth)} frame(s) in {field}" in result.stderr
    images = sorted(field.rglob("*.jpg"))
    assert len(images) == len(truth) and len(list(field.rglob("*.json"))) == len(truth)
    assert {p.parent.name for p in images} <= set(CLASSES)

    # a person sorts them: each frame to its true class folder (its sidecar goes along, or stays: both are fine)
    sequences = sorted(json.loads(p.with_suffix(".json").read_text())["sequence"] for p in images)
    first = sequences[0]
    assert sequences == list(range(first, first + len(truth)))
    moved = 0
    for image in images:
        sidecar = json.loads(image.with_suffix(".json").read_text())
        true = truth[sidecar["sequence"] - first]
        assert sidecar["predicted"] == image.parent.name and sidecar["model"] == "model.tflite"
        if true != image.parent.name:
            (field / true).mkdir(exist_ok=True)
            image.rename(field / true / image.name)
            moved += 1
    # a predicted-label folder may be left empty by the sorting: convert ignores it

    out = tmp_path / "run2"
    result = convert(shapes, "--out", out, "--extra-data", field, *TINY)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    first_report = json.loads((first_model / "report.json").read_text())
    extra = report["extra_data"]
    assert extra["folders"] == [str(field)] and sum(extra["train_images"].values()) == len(truth)
    assert extra["train_images"] == {name: truth.count(name) for name in CLASSES}
    assert report["split_sizes"]["train"] == first_report["split_sizes"]["train"] + len(truth)
    assert report["split_sizes"]["test"] == first_report["split_sizes"]["test"]  # the same test images
    assert report["skipped"] == []  # sidecars and the temporary names are not "bad images"
    assert f"came from --extra-data ({field})" in (out / "report.md").read_text()


def test_extra_data_with_a_class_the_data_does_not_have_is_one_error_line(shapes, tmp_path):
    tensorflow_or_skip()
    from PIL import Image

    (tmp_path / "extra" / "triangle").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "extra" / "triangle" / "a.png")
    (tmp_path / "extra" / "circle").mkdir()  # empty: ignored
    line = one_error_line(convert(shapes, "--out", tmp_path / "run", "--extra-data", tmp_path / "extra", *TINY))
    assert "class folder(s) ['triangle'] that the data does not have" in line
    line = one_error_line(convert(shapes, "--out", tmp_path / "run", "--extra-data", tmp_path / "nowhere", *TINY))
    assert "--extra-data" in line and "not a folder" in line
