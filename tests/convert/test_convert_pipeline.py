"""`edgecls convert` end to end on small real data: train, export int8, verify through the runtime, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI, TINY, WEIGHTS, convert, one_error_line, require, tensorflow_or_skip
from PIL import Image
from typer.testing import CliRunner

from edgecls import Classifier
from edgecls.cli.app import app

pytestmark = pytest.mark.slow  # trains or converts real models

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _tf():
    tensorflow_or_skip()


@pytest.fixture(scope="module")
def compact_run(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("compact")
    result = convert(shapes, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_artifacts_and_report_fields(compact_run):
    out = compact_run
    for name in (
        "model.tflite",
        "labels.txt",
        "model.keras",
        "report.json",
        "report.md",
        "confusion_matrix.png",
        "training_curves.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["circle", "square", "stripes"]
    for key in ("float", "int8"):
        assert 0.0 <= report[key]["top1"] <= 1.0 and "confusion_matrix" in report[key] and "per_class" in report[key]
    assert "top5" not in report["float"]  # only with more than five classes
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["drop_points"] == pytest.approx((report["float"]["top1"] - report["int8"]["top1"]) * 100, abs=1e-6)
    assert report["passed"] is True and report["int8_bytes"] == (out / "model.tflite").stat().st_size  # as info says
    assert report["float_tflite_bytes"] > report["int8_graph_bytes"] > 0
    assert report["split_sizes"] == {"train": 30, "val": 6, "test": 6} and report["skipped"] == []
    assert report["class_counts"]["test"] == {"circle": 2, "square": 2, "stripes": 2}
    assert report["majority_class"] == {"class": "circle", "top1": pytest.approx(1 / 3)}
    assert (out / "labels.txt").read_text().split() == report["classes"]
    md = (out / "report.md").read_text()  # a 3-epoch model may not learn: the verdict line then says so
    assert (
        "Parity gate PASSED" if not report["learned_nothing"] else "Parity gate passed, but the model learned nothing"
    ) in md
    assert "conv biases corrected for the rounding error" in (out / "report.md").read_text()
    history = report["history"]
    kept = history["stages"][-1]["kept_epoch"]  # TINY: 3 epochs, early stopping watches the last (2 * 3 // 3 = 2)
    assert (
        kept == 3
        and (
            f"The model is the weights of epoch 3 of 3 (train stage, lowest validation loss "
            f"{history['val_loss'][2]:.4f}"
        )
        in (out / "report.md").read_text()
    )
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert Image.open(out / png).size[0] > 200
    # Low agreement without int8 tuning: the report points to it.
    from edgecls.convert.report import markdown

    assert "`--int8-method int8-tune` fits" in markdown({**report, "agreement": 0.95})
    assert "`--int8-method int8-tune` fits" not in markdown({**report, "agreement": 0.99})


def test_exported_model_is_static_int8_with_manifest(compact_run):
    with Classifier(compact_run / "model.tflite") as clf:
        detail = clf.interpreter.get_input_details()[0]
        assert list(detail["shape_signature"]) == [1, 32, 32, 3]  # static batch 1 for the Edge TPU compiler
        assert clf.input_spec.dtype == "uint8" and clf.output_spec.dtype == "uint8"  # the default --io
        assert clf.labels.source == "edgecls manifest" and clf.labels.names == ("circle", "square", "stripes")
        manifest = clf.model_info.manifest
        assert manifest["preprocess"]["mean"] == 0.0 and manifest["input"]["color"] == "rgb"
        prov = manifest["provenance"]
        assert prov["dataset"]["seed"] == 0 and len(prov["dataset"]["fingerprint"]) == 16
        assert prov["versions"]["tensorflow"] and manifest["metrics"]["passed"] is True
        ops = set(clf.describe()["ops"])
        # QUANTIZE: the uint8 input and output (the default --io) around the int8 graph
        assert ops <= {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "QUANTIZE"}, ops


def test_classify_needs_no_other_flag(compact_run, shapes):
    image = min((shapes / "stripes").iterdir())
    result = runner.invoke(app, ["classify", str(compact_run / "model.tflite"), str(image), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert {p["label"] for p in record["predictions"]} == {"circle", "square", "stripes"}


def test_augmentation_is_not_in_the_exported_model(compact_run):
    import keras

    model = keras.models.load_model(compact_run / "model.keras", compile=False)
    names = [layer.name for layer in model.layers]
    assert "augment" not in names and not any(n.startswith("random_") for n in names)
    assert names[1] == "normalize"  # normalisation is inside the model


def test_seed_cnn_binary_sigmoid_end_to_end(shapes, tmp_path):
    data = tmp_path / "two"
    for cls in ("circle", "stripes"):
        shutil.copytree(shapes / cls, data / cls)
    out = tmp_path / "seed"
    result = convert(
        data, "--out", out, "--arch", "seed-cnn", "--epochs", "2", "--max-drop", "100", "--calibration-samples", "10"
    )
    assert result.exit_code == 0, result.output
    with Classifier(out / "model.tflite") as clf:
        assert clf.output_spec.size == 1 and clf.output_spec.num_classes == 2  # one sigmoid unit
        assert clf.model_info.manifest["output"]["head"] == "sigmoid"
    image = min((data / "stripes").iterdir())
    cli = runner.invoke(app, ["classify", str(out / "model.tflite"), str(image), "--json"])
    preds = json.loads(cli.stdout)["predictions"]
    assert sorted(p["label"] for p in preds) == ["circle", "stripes"]
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=0.01)


def colour_dataset(root: Path, per_class: int = 15) -> Path:
    """Two trivially separable classes (reddish vs bluish noise): any model learns them in a few epochs."""
    rng = np.random.default_rng(0)
    for label, channel in (("blue", 2), ("red", 0)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            pixels[..., channel] += 160
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_parity_gate_failure_keeps_artifacts_and_exits_non_zero(tmp_path, monkeypatch):
    from edgecls.convert import evaluate

    real = evaluate.tflite_probabilities

    def swapped(*args, **kwargs):  # the int8 model "answers" the other class every time
        return real(*args, **kwargs)[:, ::-1]

    monkeypatch.setattr(evaluate, "tflite_probabilities", swapped)
    out = tmp_path / "gate"
    args = [a if a != "100" else "1.0" for a in TINY]
    result = convert(
        colour_dataset(tmp_path / "colours"),
        "--out",
        out,
        *args,
        "--augment",
        "0",
        "--epochs",
        "8",
        "--batch-size",
        "4",
        "--learning-rate",
        "0.01",
    )
    report = json.loads((out / "report.json").read_text())
    assert report["float"]["top1"] > 0.5, "the float model should learn red vs blue"
    line = one_error_line(result, code=3)  # a negative verdict, apart from errors (1)
    assert "did not pass" in line and "--int8-method qat" in line  # the way out, when post-training int8 loses too much
    assert report["passed"] is False and report["drop_points"] > 1.0
    assert (out / "model.tflite").is_file() and "Parity gate FAILED" in (out / "report.md").read_text()


def test_uint8_io_and_float16(shapes, tmp_path):
    out = tmp_path / "u8"
    # also through tf.distribute's MirroredStrategy (one CPU device here), as a multi-GPU workstation would run it
    # (and with the regularisers and without bias correction, which the report records)
    result = convert(
        shapes,
        "--out",
        out,
        *TINY,
        "--io",
        "uint8",
        "--strategy",
        "mirrored",
        "--mixup",
        "0.2",
        "--weight-decay",
        "0.01",
        "--optimizer",
        "sgd",
        "--no-bias-correction",
    )
    assert result.exit_code == 0, result.output
    with Classifier(out / "model.tflite") as clf:
        assert clf.input_spec.dtype == "uint8" and clf.output_spec.dtype == "uint8"
        assert clf.preprocessor._lut_kind == "identity"  # raw pixels straight into the tensor
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["train.mixup"] == 0.2 and report["settings"]["train.weight_decay"] == 0.01
    assert report["settings"]["train.optimizer"] == "sgd"
    assert report["quantization"]["bias_correction"] is False
    out16 = tmp_path / "f16"
    result = convert(shapes, "--out", out16, *TINY, "--quant", "float16")
    assert result.exit_code == 0, result.output
    report = json.loads((out16 / "report.json").read_text())
    assert report["quantization"]["mode"] == "float16" and "tflite" in report
    with Classifier(out16 / "model.tflite") as clf:
        assert clf.input_spec.dtype == "float32"


def test_target_edgetpu_preflights_and_gives_the_compile_command(shapes, tmp_path):
    out = tmp_path / "tpu"
    result = convert(shapes, "--out", out, *TINY, "--target", "edgetpu")
    assert result.exit_code == 0, result.output
    tpu = json.loads((out / "report.json").read_text())["edgetpu"]
    assert tpu["preflight"]["status"] == "pass" and tpu["preflight"]["cpu_ops"] == 0
    if tpu["compiler"] is None:  # no edgetpu_compiler on this machine: the exact command instead
        assert tpu["command"] == "edgetpu_compiler -s -o . model.tflite"
        assert "edgetpu_compiler -s -o . model.tflite" in result.output.replace("\n", " ")


def test_qat_exports_a_valid_int8_model(shapes, tmp_path):
    if not IN_CI:  # under CI the qat extra is installed (it is part of .[all])
        pytest.importorskip("tensorflow_model_optimization")
    out = tmp_path / "qat"
    result = convert(shapes, "--out", out, *TINY, "--qat", "--qat-epochs", "1")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["qat"]["epochs"] == 1 and len(report["qat"]["history"]["loss"]) == 1
    assert {"int8_top1", "drop_points", "agreement"} <= set(report["ptq"])
    assert "post-training int8 before QAT" in result.output
    with Classifier(out / "model.tflite") as clf:
        assert clf.input_spec.dtype == "uint8" and clf.output_spec.dtype == "uint8"
    classify = runner.invoke(app, ["classify", str(out / "model.tflite"), str(shapes / "circle" / "circle_0000.png")])
    assert classify.exit_code == 0, classify.output


def test_qat_on_a_pretrained_mobilenet(shapes, tmp_path):
    """The nested MobileNet is rebuilt flat with tf_keras so the toolkit can wrap it; the weights carry over."""
    weights = require(WEIGHTS / "mobilenet_v1_0.25_224_no_top.h5", "MobileNet V1 0.25 ImageNet weights")
    if not IN_CI:
        pytest.importorskip("tensorflow_model_optimization")
    out = tmp_path / "mbqat"
    result = convert(
        shapes,
        "--out",
        out,
        "--arch",
        "mobilenet_v1",
        "--alpha",
        "0.25",
        "--weights",
        weights,
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--no-baseline",
        "--calibration-samples",
        "20",
        "--max-drop",
        "100",
        "--batch-size",
        "8",
        "--qat",
        "--qat-epochs",
        "1",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["qat"]["epochs"] == 1 and "ptq" in report
    with Classifier(out / "model.tflite") as clf:
        assert clf.input_spec.dtype == "uint8"
        assert len(clf.classify(shapes / "circle" / "circle_0000.png")) == 3


def test_qat_errors_come_before_training(shapes, tmp_path, monkeypatch):
    import sys

    v3 = convert(
        shapes, "--out", tmp_path / "m", "--no-baseline", "--qat", "--arch", "mobilenet_v3_small", "--weights", "none"
    )
    assert "--int8-method qat supports --arch seed-cnn, compact-cnn, mobilenet_v1, mobilenet_v2" in one_error_line(v3)
    monkeypatch.setitem(sys.modules, "tensorflow_model_optimization", None)  # the extra is not installed
    missing = convert(shapes, "--out", tmp_path / "q", *TINY, "--qat")
    assert "pip install 'edgecls[qat]'" in one_error_line(missing)
    assert not (tmp_path / "q" / "model.tflite").exists()


def test_external_keras_model_with_calibration_folder(shapes, tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path = tmp_path / "external.keras"
    model.save(path)
    out = tmp_path / "ext"
    result = convert(path, "--calibration", shapes, "--out", out, "--max-drop", "100", "--calibration-samples", "10")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["test_source"] == "calibration" and report["classes"] == ["circle", "square", "stripes"]
    assert report["model"]["source_model"] == str(path)
    assert len(report["int8"]["per_class"]) == 3
    labels = tmp_path / "four.txt"
    labels.write_text("a\nb\nc\nd\n")
    bad = convert(path, "--calibration", shapes, "--out", tmp_path / "bad", "--labels", labels)
    assert "the model has 3 classes" in one_error_line(bad)


def test_a_model_that_always_gives_one_answer_is_flagged(shapes, tmp_path):
    """A model stuck on one class has perfect parity (int8 gives the same one answer), but it learned nothing: the
    report's first line says so instead of PASSED, and the command line warns."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([np.zeros((3, 3), np.float32), np.array([0.0, 3.0, 0.0], np.float32)])  # always 'square'
    path = tmp_path / "stuck.keras"
    model.save(path)
    out = tmp_path / "stuck"
    result = convert(path, "--calibration", shapes, "--out", out, "--calibration-samples", "10")
    assert result.exit_code == 0, result.output  # parity holds
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["learned_nothing"] is True and report["agreement"] == 1.0
    assert report["float"]["top1"] == pytest.approx(1 / 3)
    assert report["majority_class"] == {"class": "circle", "top1": pytest.approx(1 / 3)}  # 14 of each: the first
    warning = next(w for w in report["warnings"] if "no better than always answering 'circle' (33.3%" in w)
    assert "check that the model and the labels belong together" in warning
    assert any(
        "has 42 images, so one image is 2.38 points of top-1, more than the --max-drop of 1.00" in w
        for w in report["warnings"]
    )  # the default gate cannot measure its own limit on 42 images
    said = " ".join(result.output.split())
    assert "LEARNED NOTHING" in said and "warning: the float model's top-1 (33.3%) is no better" in said
    first = (out / "report.md").read_text().splitlines()[2]
    assert first.startswith("**Parity gate passed, but the model learned nothing**") and "PASSED" not in first
    assert "the test split has 42 images, so each image the model gets right or wrong moves top-1 by 2.38" in first
    from edgecls.convert.gate import guessing_warning

    assert "lower --learning-rate" in guessing_warning(0.255, report["majority_class"], trained=True)


def test_transfer_learning_from_the_shared_mobilenet_weights(flowers, tmp_path):
    weights = require(WEIGHTS / "mobilenet_v1_0.25_224_no_top.h5", "MobileNet V1 0.25 ImageNet weights")
    data = tmp_path / "flowers"
    for cls in ("daisy", "rose", "tulip"):
        (data / cls).mkdir(parents=True)
        for f in sorted((flowers / cls).iterdir())[:12]:
            shutil.copy(f, data / cls / f.name)  # real JPEG files
    out = tmp_path / "mobilenet"
    result = convert(
        data,
        "--out",
        out,
        "--arch",
        "mobilenet_v1",
        "--alpha",
        "0.25",
        "--weights",
        weights,
        "--input-size",
        "96",
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--fine-tune-layers",
        "6",
        "--no-baseline",
        "--max-drop",
        "100",
        "--calibration-samples",
        "16",
        "--int8-method",
        "int8-tune",
        "--int8-tune-epochs",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert "int8-tune   2/2  KL" in result.output
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["history"]["stages"]] == ["head", "fine-tune"]
    # --int8-tune: error-compensating rounding on the base's 27 convs, tuned on the training split; recorded.
    tuning = report["int8_tuning"]
    assert (
        tuning["rounded_layers"] == 27 and tuning["epochs"] == 2 and tuning["images"] == report["split_sizes"]["train"]
    )
    assert report["quantization"] == {
        "mode": "int8",
        "io": "uint8",
        "method": "int8-tune",
        "bias_correction": False,
        "int8_tune": True,
    }
    assert Classifier(out / "model.tflite").model_info.manifest["quantization"]["int8_tune"] is True
    assert "error-compensating rounding on 27 conv layers" in (out / "report.md").read_text()
    assert report["history"]["stages"][1]["learning_rate"] == pytest.approx(1e-4)
    # The bottom of the base is frozen in both stages: it must still hold the ImageNet weights from the file.
    import h5py
    import keras
    from edgecls.convert.models import base_model

    model = keras.models.load_model(out / "model.keras", compile=False)
    kernel = base_model(model).get_layer("conv1").get_weights()[0]
    with h5py.File(weights, "r") as f:
        stored = f["conv1"]["conv1"]["kernel:0"][()]
    assert np.allclose(kernel, stored)


def test_a_frozen_mobilenet_v2_trains_its_head_on_features_computed_once(flowers, tmp_path, monkeypatch):
    """The issue's obvious command, `--arch mobilenet_v2 --weights <the shared V2 file>`, with no alpha: the file's
    alpha (1.0) is used; without augmentation the frozen backbone runs once and the head trains on its features."""
    weights = require(WEIGHTS / "mobilenet_v2_1.0_224_no_top.h5", "MobileNetV2 1.0 ImageNet weights")
    data = tmp_path / "flowers"
    for cls in ("daisy", "rose", "tulip"):
        (data / cls).mkdir(parents=True)
        for f in sorted((flowers / cls).iterdir())[:12]:
            shutil.copy(f, data / cls / f.name)
    from edgecls.convert import training

    calls = []
    real = training._head_on_features
    monkeypatch.setattr(training, "_head_on_features", lambda *a: calls.append(1) or real(*a))
    out = tmp_path / "v2"
    result = convert(
        data,
        "--out",
        out,
        "--arch",
        "mobilenet_v2",
        "--weights",
        weights,
        "--input-size",
        "96",
        "--augment",
        "0",
        "--fine-tune-epochs",
        "0",
        "--epochs",
        "3",
        "--no-baseline",
        "--max-drop",
        "100",
        "--min-agreement",
        "0",
        "--calibration-samples",
        "16",
        "--int8-method",
        "bias-correction",
    )
    assert result.exit_code == 0, result.output
    assert "running the frozen backbone once" in result.output and calls == [1]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["alpha"] == 1.0 and report["history"]["stages"][0]["on_features"] is True
    assert len(report["history"]["loss"]) == 3
    import keras
    from edgecls.convert.models import base_model

    model = keras.models.load_model(out / "model.keras", compile=False)
    assert base_model(model).count_params() == 2_257_984
    # the head that trained on the features is the model's head: the exported model scores like the float one
    assert report["agreement"] >= 0.5 and report["float"]["top1"] > 0.34


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "seed-cnn", "--input-size", "32"], "seed-cnn is defined on 64x64"),
        (["--arch", "mobilenet_v1", "--alpha", "0.3", "--weights", "none"], "supports --alpha"),
        (["--arch", "mobilenet_v1", "--weights", "/nonexistent.h5"], "--weights '/nonexistent.h5'"),
        (["--strategy", "multi-worker"], "TF_CONFIG"),
        (["--split", "70,30"], "--split expects three numbers"),
        (["--target", "edgetpu", "--quant", "float16"], "--target edgetpu needs --quant int8"),
        (["--int8-tune", "--quant", "dynamic"], "--int8-method int8-tune fits a full int8 model"),
        (["--int8-method", "qat", "--quant", "float16"], "--int8-method qat fits a full int8 model"),
        (["--int8-tune", "--qat"], "--int8-tune and --qat are two ways"),
    ],
)
def test_bad_options_are_one_line_errors(shapes, tmp_path, args, message, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = convert(shapes, "--out", tmp_path / "x", "--no-baseline", *args)
    if "--split" in args:  # a usage error from Typer
        assert result.exit_code == 2 and message in result.output
        return
    assert message in one_error_line(result)


def test_bad_datasets_are_one_line_errors(tmp_path, shapes):
    assert "not found" in one_error_line(convert(tmp_path / "missing", "--out", tmp_path / "o"))
    single = tmp_path / "single"
    shutil.copytree(shapes / "circle", single / "circle")
    assert "single class" in one_error_line(convert(single, "--out", tmp_path / "o"))
    empty = tmp_path / "empty"
    shutil.copytree(shapes, empty)
    (empty / "nothing").mkdir()
    assert "hold no image files" in one_error_line(convert(empty, "--out", tmp_path / "o"))


def test_an_op_without_int8_kernel_is_named():
    import keras
    from edgecls.convert.tflite_export import to_tflite

    from edgecls.errors import ConversionError

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.cumsum(t, axis=1))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.raises(ConversionError, match="op CUMSUM .* no int8 kernel"):
        to_tflite(model, representative=np.random.default_rng(0).random((8, 8, 8, 3), np.float32) * 255)


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    import os

    from edgecls import fsutil

    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")

    def boom(*_args):  # the rename never happens, as if the process died
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        fsutil.atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_mixup_blends_training_batches_only(shapes):
    from edgecls.convert.data import scan
    from edgecls.convert.training import TrainConfig, make_datasets

    dataset = scan(shapes, input_size=(32, 32), channels=3, seed=0)
    train_ds, val_ds = make_datasets(dataset, TrainConfig(mixup=1.0, augment=0.0, batch_size=16), sigmoid=False)
    images, labels = next(iter(train_ds))
    labels = np.asarray(labels)
    assert np.allclose(labels.sum(axis=1), 1.0) and (labels.max(axis=1) < 0.99).any()
    originals = dataset.images["train"].astype(np.float32)
    assert not any(np.allclose(np.asarray(images)[0], o) for o in originals)  # a blend, not a training image
    _, val_labels = next(iter(val_ds))
    assert set(np.unique(np.asarray(val_labels))) <= {0.0, 1.0}


def test_training_settings_out_of_range_say_which_and_why():
    from edgecls.convert.training import TrainConfig

    from edgecls.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer 'rmsprop' is not one of adam, sgd"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match=r"weight decay must be in \[0, 1\) \(received 1.5\)"):
        TrainConfig(weight_decay=1.5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_shrinks_kernels_only(optimizer):
    import keras
    from edgecls.convert.models import ModelSpec, create_model
    from edgecls.convert.training import compile_model

    x = np.random.default_rng(0).random((16, 32, 32, 3), np.float32) * 255
    y = keras.utils.to_categorical(np.arange(16) % 3, 3)
    norms = {}
    for decay in (0.0, 0.9):
        keras.utils.set_random_seed(1)
        model = create_model("compact-cnn", ModelSpec(num_classes=3, input_size=32, width=8, depth=1))
        compile_model(
            model,
            learning_rate=1e-2,
            sigmoid=False,
            label_smoothing=0.0,
            decay_steps=1000,
            weight_decay=decay,
            optimizer=optimizer,
        )
        model.fit(x, y, epochs=10, batch_size=8, verbose=0)
        norms[decay] = (
            float(np.linalg.norm(model.get_layer("stem_conv").kernel)),
            float(np.linalg.norm(model.get_layer("stem_bn").gamma)),
        )
        assert type(model.optimizer).__name__ == ("SGD" if optimizer == "sgd" else "AdamW" if decay else "Adam")
    assert norms[0.9][0] < 0.9 * norms[0.0][0], norms  # kernels decay
    assert norms[0.9][1] == pytest.approx(norms[0.0][1], rel=0.05), norms  # BatchNorm scales are left alone


def test_training_ends_with_the_weights_of_the_kept_epoch(shapes, tmp_path):
    """The stage records which epoch's weights it ended with, and the model evaluates to that epoch's validation
    loss: the lowest over the last third of the stage, which early stopping watches."""
    import keras
    from edgecls.convert.data import scan
    from edgecls.convert.models import ModelSpec, create_model
    from edgecls.convert.training import TrainConfig, make_datasets, make_strategy, train

    dataset = scan(shapes, input_size=(32, 32), channels=3, seed=0)
    keras.utils.set_random_seed(0)
    model = create_model("compact-cnn", ModelSpec(num_classes=3, input_size=32, width=8, depth=1))
    config = TrainConfig(epochs=9, batch_size=8, augment=1.0, patience=1)
    history = train(
        model, dataset, config, sigmoid=False, checkpoint_dir=tmp_path / "ckpt", strategy=make_strategy("default")
    )
    kept = history["stages"][-1]["kept_epoch"]
    watched = history["val_loss"][(2 * 9) // 3 :]
    assert kept == 7 + int(np.argmin(watched)) and 7 <= kept <= len(history["val_loss"])
    _, val_ds = make_datasets(dataset, config, sigmoid=False)
    assert model.evaluate(val_ds, verbose=0)[0] == pytest.approx(history["val_loss"][kept - 1], rel=1e-4)


def test_mobilenet_from_random_weights_trains_as_one_ordinary_network():
    """With --weights none nothing is frozen and BatchNorm learns its statistics (a frozen, inference-mode
    BatchNorm on random weights never learns: the bug this test keeps out)."""
    import keras
    from edgecls.convert.models import ModelSpec, base_model, create_model
    from edgecls.convert.training import compile_model

    model = create_model("mobilenet_v1", ModelSpec(num_classes=3, input_size=32, weights="none"))
    base = base_model(model)
    assert base.trainable
    bn = base.get_layer("conv1_bn")
    before = np.array(bn.moving_mean)
    compile_model(model, learning_rate=1e-3, sigmoid=False, label_smoothing=0.0, decay_steps=10)
    x = np.random.default_rng(0).random((8, 32, 32, 3), np.float32) * 255
    model.fit(x, keras.utils.to_categorical([0, 1, 2, 0, 1, 2, 0, 1], 3), epochs=1, verbose=0)
    assert not np.allclose(before, np.array(bn.moving_mean))


@pytest.mark.parametrize("command", ["convert", "tune"])
def test_host_commands_without_tensorflow_say_what_to_install(command, shapes, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # a device install: the runtime without the convert extra
    result = runner.invoke(app, [command, str(shapes), "--out", str(tmp_path / "o")])
    assert f"edgecls {command} runs on the workstation and needs TensorFlow" in one_error_line(result)
    assert "pip install 'edgecls[convert]'" in result.stderr
