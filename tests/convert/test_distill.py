"""`edgecls convert --teacher`: distillation targets, the split check that keeps test accuracy honest, and errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY, convert, one_error_line, tensorflow_or_skip

from edgecls import Classifier

pytestmark = pytest.mark.slow  # trains or converts real models


@pytest.fixture(scope="module", autouse=True)
def _tf():
    tensorflow_or_skip()


@pytest.fixture(scope="module")
def teacher_run(shapes, tmp_path_factory):
    """A teacher made by convert itself, at a larger input size than the students below (48 vs 32 px)."""
    out = tmp_path_factory.mktemp("teacher")
    result = convert(shapes, "--out", out, *TINY, "--input-size", "48", "--width", "12", "--epochs", "4")
    assert result.exit_code == 0, result.output
    return out


def test_student_trains_from_a_convert_teacher_and_reports_it(shapes, teacher_run, tmp_path):
    out = tmp_path / "student"
    result = convert(shapes, "--out", out, *TINY, "--teacher", teacher_run, "--teacher-weight", "0.6")
    assert result.exit_code == 0, result.output
    assert "distilling from" in result.output
    report = json.loads((out / "report.json").read_text())
    teacher = report["teacher"]
    assert teacher["split_checked"] is True and teacher["weight"] == 0.6 and teacher["arch"] == "compact-cnn"
    assert teacher["input_size"] == [48, 48] and teacher["path"] == str(teacher_run / "model.keras")
    assert 0.0 <= teacher["test_top1"] <= 1.0
    assert report["settings"]["teacher"] == str(teacher_run) and report["settings"]["teacher_weight"] == 0.6
    manifest = Classifier(out / "model.tflite").model_info.manifest
    assert manifest["provenance"]["teacher"]["split_checked"] is True
    md = (out / "report.md").read_text()
    assert "## Distillation" in md and "0.6 x the probabilities" in md and "has not seen the held-out images" in md


def test_training_targets_blend_the_teachers_probabilities_for_the_same_batch(shapes, teacher_run):
    """With augmentation off the batch is the raw images: the targets must be 0.7 x what the teacher predicts for
    exactly those images (resized to its 48 px input) + 0.3 x the one-hot labels. Validation keeps the labels."""
    import tensorflow as tf
    from edgecls.convert.data import scan
    from edgecls.convert.distill import load_teacher
    from edgecls.convert.training import TrainConfig, make_datasets

    dataset = scan(shapes, input_size=(32, 32), channels=3, seed=0)
    teacher = load_teacher(teacher_run, weight=0.7)
    train_ds, val_ds = make_datasets(dataset, TrainConfig(augment=0.0, batch_size=16), sigmoid=False, teacher=teacher)
    images, targets = (np.asarray(t) for t in next(iter(train_ds)))
    probs = teacher.model.predict(tf.image.resize(images, (48, 48)), verbose=0)
    onehot = np.zeros_like(probs)
    originals = dataset.images["train"].reshape(len(dataset.images["train"]), -1).astype(np.float32)
    labels = dataset.labels("train")
    for row, image in enumerate(images):
        index = int(np.flatnonzero((originals == image.reshape(-1)).all(axis=1))[0])  # which training image it is
        onehot[row, labels[index]] = 1.0
    assert np.allclose(targets, 0.7 * probs + 0.3 * onehot, atol=1e-5)
    assert np.allclose(targets.sum(axis=1), 1.0, atol=1e-5) and (targets.max(axis=1) < 0.999).all()
    _, val_targets = next(iter(val_ds))
    assert set(np.unique(np.asarray(val_targets))) <= {0.0, 1.0}


def test_sigmoid_student_takes_the_teachers_positive_class_column(teacher_run):
    """A two-class softmax teacher distils into the seed-cnn's single sigmoid output through its second column."""
    from edgecls.convert.distill import load_teacher

    teacher = load_teacher(teacher_run, weight=1.0)
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32) * 255
    full = np.asarray(teacher.probabilities(x, sigmoid=False))
    assert full.shape == (4, 3) and np.allclose(full.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.asarray(teacher.probabilities(x, sigmoid=True)), full[:, 1:2])
    gray = np.asarray(teacher.probabilities(x[..., :1], sigmoid=False))  # a grayscale student's batch
    assert gray.shape == (4, 3)


def _copy_teacher(teacher_run, tmp_path, **changes):  # type: ignore[no-untyped-def]
    copy = tmp_path / "teacher-copy"
    shutil.copytree(teacher_run, copy)
    report = json.loads((copy / "report.json").read_text())
    for key, value in changes.items():
        if key == "seed":
            report["settings"]["train.seed"] = value
        else:
            report[key] = value
    (copy / "report.json").write_text(json.dumps(report))
    return copy


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": 3}, "seed 3 (this run: 0)"),
        ({"dataset_fingerprint": "0123456789abcdef"}, "dataset fingerprint 0123456789abcdef"),
    ],
)
def test_a_teacher_from_another_split_is_refused_before_training(shapes, teacher_run, tmp_path, changes, message):
    copy = _copy_teacher(teacher_run, tmp_path, **changes)
    result = convert(shapes, "--out", tmp_path / "s", *TINY, "--teacher", copy)
    line = one_error_line(result)
    assert "trained on a different split" in line and message in line and "dishonest" in line
    assert not (tmp_path / "s" / "model.tflite").exists()


def test_a_teacher_without_its_report_is_used_and_the_report_says_so(shapes, teacher_run, tmp_path):
    from edgecls.convert.data import scan
    from edgecls.convert.distill import check_teacher, load_teacher

    (tmp_path / "t").mkdir()
    shutil.copy(teacher_run / "model.keras", tmp_path / "t" / "teacher.keras")
    teacher = load_teacher(tmp_path / "t" / "teacher.keras", weight=0.5)
    dataset = scan(shapes, input_size=(32, 32), channels=3, seed=0)
    info = check_teacher(teacher, dataset, split=(0.7, 0.15, 0.15), sigmoid=False)
    assert info["split_checked"] is False and "test accuracy is optimistic" in info["note"]


def test_teacher_errors_are_one_line(shapes, teacher_run, tmp_path):
    assert "not found" in one_error_line(
        convert(shapes, "--out", tmp_path / "a", *TINY, "--teacher", tmp_path / "nope")
    )
    assert "no model.keras in that folder" in one_error_line(
        convert(shapes, "--out", tmp_path / "b", *TINY, "--teacher", tmp_path)
    )
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file at all")
    assert "cannot load it as a Keras model" in one_error_line(
        convert(shapes, "--out", tmp_path / "c", *TINY, "--teacher", corrupt)
    )
    two = tmp_path / "two"
    for name in ("circle", "square"):
        shutil.copytree(shapes / name, two / name)
    assert "has 3 outputs but this dataset has 2 classes" in one_error_line(
        convert(two, "--out", tmp_path / "d", *TINY, "--teacher", teacher_run)
    )
    assert "--teacher-weight must be in (0, 1]" in one_error_line(
        convert(shapes, "--out", tmp_path / "e", *TINY, "--teacher", teacher_run, "--teacher-weight", "1.5")
    )
    model = teacher_run / "model.keras"
    assert "--teacher distils while training" in one_error_line(
        convert(model, "--calibration", shapes, "--out", tmp_path / "f", "--teacher", teacher_run)
    )
