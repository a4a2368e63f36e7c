"""Knowledge distillation: train a small model on a larger model's probabilities as well as on the labels.

`edgecls convert --teacher OUT_DIR` takes the float model of an earlier convert run (typically a fine-tuned MobileNet)
and trains the new model towards ``weight x teacher probabilities + (1 - weight) x labels``. The teacher scores the
very batch the student sees, after augmentation and MixUp ("consistent" distillation, Beyer et al. 2022,
"Knowledge distillation: A good teacher is patient and consistent"), so the soft targets describe the pixels being
trained on, not the original photo.

Honest accuracy needs the teacher never to have seen this run's test images. A teacher made by `edgecls convert`
has a report.json beside its model.keras: its dataset fingerprint, split and seed must be this run's, or the run
stops with an error. A teacher without a report is used, and the report says its split could not be checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ConfigError


@dataclass
class Teacher:
    """A loaded teacher: its Keras model (raw 0..255 pixels in, probabilities out) and what is known of it."""

    model: Any
    path: Path
    weight: float
    report: dict[str, Any] | None  # the teacher run's report.json, when it has one

    @property
    def input_size(self) -> tuple[int, int]:
        shape = self.model.input_shape
        return int(shape[1]), int(shape[2])

    @property
    def channels(self) -> int:
        return int(self.model.input_shape[3])

    @property
    def outputs(self) -> int:
        return int(np.prod(self.model.output_shape[1:]))

    def probabilities(self, images: Any, *, sigmoid: bool) -> Any:
        """The teacher's probabilities for a batch of the student's float images (raw pixels), in the student's
        target layout: one column for a sigmoid head, one per class for softmax. Runs in TensorFlow graphs."""
        import tensorflow as tf

        x = tf.convert_to_tensor(images, tf.float32)
        if self.channels == 3 and x.shape[-1] == 1:
            x = tf.image.grayscale_to_rgb(x)
        elif self.channels == 1 and x.shape[-1] == 3:
            x = tf.image.rgb_to_grayscale(x)
        if tuple(x.shape[1:3]) != self.input_size:
            x = tf.image.resize(x, self.input_size)  # bilinear, as the augmentation layers resample
        p = tf.cast(self.model(x, training=False), tf.float32)
        p = tf.reshape(p, (-1, self.outputs))
        if sigmoid:
            return p if self.outputs == 1 else p[:, 1:2]
        if self.outputs == 1:
            return tf.concat([1.0 - p, p], axis=1)
        return p

    def blend(self, images: Any, targets: Any, *, sigmoid: bool) -> Any:
        """The distillation targets: ``weight`` of the teacher's probabilities, the rest the given targets."""
        soft = self.probabilities(images, sigmoid=sigmoid)
        return self.weight * soft + (1.0 - self.weight) * targets


def model_file(path: Path) -> Path:
    """The teacher's float Keras model: PATH itself, or PATH/model.keras for a convert output folder."""
    if path.is_dir():
        candidate = path / "model.keras"
        if not candidate.is_file():
            raise ConfigError(
                f"--teacher {path}: no model.keras in that folder; give an `edgecls convert` output "
                "folder or a .keras/.h5 file"
            )
        return candidate
    if not path.is_file():
        raise ConfigError(f"--teacher {path}: not found; give an `edgecls convert` output folder or a .keras/.h5 file")
    return path


def load_teacher(path: Path, *, weight: float) -> Teacher:
    """Load the teacher named by ``--teacher``, with the report of the run that made it when there is one."""
    import keras

    file = model_file(Path(path))
    try:
        model = keras.models.load_model(file, compile=False)
    except Exception as exc:  # a corrupt or foreign file: one line, not a traceback
        raise ConfigError(
            f"--teacher {file}: cannot load it as a Keras model ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    model.trainable = False
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] is None or shape[3] not in (1, 3):
        raise ConfigError(f"--teacher {file}: input shape {shape} is not an image input [batch, H, W, 1 or 3]")
    report_file = file.parent / "report.json"
    report = None
    if report_file.is_file():
        try:
            report = json.loads(report_file.read_text())
        except (OSError, ValueError):
            report = None
    return Teacher(model=model, path=file, weight=weight, report=report)


def check_teacher(
    teacher: Teacher, dataset: Any, *, split: tuple[float, float, float], sigmoid: bool
) -> dict[str, Any]:
    """Refuse a teacher that cannot be used honestly on ``dataset``; return what the report records about it.

    The classes must match. When the teacher comes with its convert report, its data must be this dataset (the
    same fingerprint) split the same way (same fractions and seed, or the same pre-split folders): a teacher that
    trained on this run's test images would carry them into the student and inflate its test accuracy.
    """
    classes = list(dataset.classes)
    expected = 1 if sigmoid else len(classes)
    usable = teacher.outputs == len(classes) or (len(classes) == 2 and teacher.outputs in (1, 2))
    if not usable:
        raise ConfigError(
            f"--teacher {teacher.path} has {teacher.outputs} outputs but this dataset has "
            f"{len(classes)} classes; the teacher must be trained on the same classes"
        )
    info: dict[str, Any] = {
        "path": str(teacher.path),
        "weight": teacher.weight,
        "input_size": list(teacher.input_size),
        "outputs": teacher.outputs,
        "target_columns": expected,
        "split_checked": False,
    }
    report = teacher.report
    if report is None:
        info["note"] = (
            "the teacher has no convert report beside it, so its training split could not be checked; "
            "if it saw this run's test images, the test accuracy is optimistic"
        )
        return info
    info["arch"] = report.get("model", {}).get("arch")
    if report.get("classes") != classes:
        raise ConfigError(
            f"--teacher {teacher.path} was trained on classes {report.get('classes')}, this run has {classes}"
        )
    settings = report.get("settings", {})
    problems = []
    if report.get("dataset_fingerprint") != dataset.fingerprint:
        problems.append(f"dataset fingerprint {report.get('dataset_fingerprint')} (this run: {dataset.fingerprint})")
    if not dataset.presplit:
        theirs = settings.get("split") or []
        if len(theirs) != 3 or not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(theirs, split)):
            problems.append(f"split {theirs} (this run: {list(split)})")
        if settings.get("train.seed") != dataset.seed:
            problems.append(f"seed {settings.get('train.seed')} (this run: {dataset.seed})")
    if problems:
        raise ConfigError(
            f"--teacher {teacher.path} was trained on a different split: {'; '.join(problems)}. It may have seen this "
            "run's test images, which would make the reported accuracy dishonest: train the teacher on the same data "
            "with the same --split and --seed"
        )
    info["split_checked"] = True
    info["teacher_float_top1"] = report.get("float", {}).get("top1")
    return info


def teacher_accuracy(
    teacher: Teacher, images: np.ndarray, labels: np.ndarray, *, sigmoid: bool, batch_size: int = 64
) -> float:
    """Top-1 of the teacher on ``images`` as it sees them in training: the student's pixels, resized to its input."""
    correct = 0
    for start in range(0, len(images), batch_size):
        p = np.asarray(teacher.probabilities(images[start : start + batch_size], sigmoid=sigmoid))
        predicted = (p[:, 0] >= 0.5).astype(np.int64) if sigmoid else p.argmax(axis=1)
        correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))
