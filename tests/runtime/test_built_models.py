"""Models built here with TensorFlow: float32, int8 and uint8 inputs, RGB and grayscale, softmax, sigmoid, logits."""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import SPECS, sample

from edgecls import Classifier


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_model_kind_classifies_correctly(built_models, backend, name):
    classes = SPECS[name][2]
    with Classifier(built_models[name], backend=backend, labels=[f"class{i}" for i in range(classes)]) as clf:
        assert clf.input_spec.channels == SPECS[name][1]
        for label in range(classes):
            preds = clf.classify(sample(name, label), top_k=classes)
            assert preds[0].index == label, (name, label, preds)
            assert preds[0].label == f"class{label}"
            scores = [p.score for p in preds]
            assert all(0.0 <= s <= 1.0 for s in scores)
            assert sum(scores) == pytest.approx(1.0, abs=0.02)  # probabilities, whatever the model's head


def test_input_dtypes_and_quantisation_are_read_from_the_model(built_models, backend):
    kinds = {}
    for name, path in built_models.items():
        with Classifier(path, backend=backend) as clf:
            kinds[name] = (clf.input_spec.dtype, clf.output_spec.size, clf.output_spec.num_classes)
    assert kinds["float_rgb_softmax"] == ("float32", 3, 3)
    assert kinds["int8_gray_softmax"] == ("int8", 4, 4)
    assert kinds["uint8_rgb_sigmoid"] == ("uint8", 1, 2)
    assert kinds["int8_rgb_logits"] == ("int8", 3, 3)


def test_quantised_input_matches_the_models_own_quantisation(built_models, backend):
    """The int8 grayscale model has Rescaling(1/255) inside: raw pixels p quantise to round(p / s) + z."""
    with Classifier(built_models["int8_gray_softmax"], backend=backend) as clf:
        spec = clf.input_spec
        frame = sample("int8_gray_softmax", 2)
        clf.scores(frame)
        fed = clf.interpreter.get_tensor(clf.interpreter.get_input_details()[0]["index"])[0]
        small = clf.preprocessor.to_array(frame)
        assert np.array_equal(fed, small)
        # With Rescaling inside, the model's float domain is raw pixels, so TensorFlow picks scale ~1 and zero
        # point -128; the runtime's default for int8 inputs (pixels shifted by 128) is exactly that quantisation.
        assert spec.scale == pytest.approx(1.0, rel=0.01) and spec.zero_point == -128
        assert clf.preprocessor.lut[:, 0].astype(int).tolist() == list(range(-128, 128))


def test_manifest_preprocessing_is_applied(built_models, tmp_path, backend):
    from edgecls.model.manifest import embed_manifest

    path = tmp_path / "with_manifest.tflite"
    labels = ["dark", "dim", "bright", "white"]
    manifest = {"preprocess": {"resize": "center-crop", "mean": 0.0, "std": 1.0}, "output": {"activation": "auto"}}
    path.write_bytes(embed_manifest(built_models["int8_gray_softmax"].read_bytes(), manifest, labels=labels))
    with Classifier(path, backend=backend) as clf:
        assert clf.labels.source == "edgecls manifest"
        assert clf.preprocessor.config.resize == "center-crop"
        assert clf.classify(sample("int8_gray_softmax", 3), top_k=1)[0].label == "white"
        # mean 0 / std 1 is the model's true domain (Rescaling inside): raw pixel p -> p / scale + zero point
        s, z = clf.input_spec.scale, clf.input_spec.zero_point
        assert clf.preprocessor.lut[200, 0] == np.clip(round(200 / s) + z, -128, 127)


def test_binary_sigmoid_model_with_two_labels_from_a_sidecar_file(built_models, tmp_path, backend):
    import shutil

    model = tmp_path / "binary.tflite"
    shutil.copy(built_models["uint8_rgb_sigmoid"], model)
    (tmp_path / "labels.txt").write_text("not_red\nred_ish\n")
    with Classifier(model, backend=backend) as clf:
        assert clf.labels.names == ("not_red", "red_ish")
        preds = clf.classify(sample("uint8_rgb_sigmoid", 1), top_k=2)
        assert preds[0].label == "red_ish" and preds[0].score + preds[1].score == pytest.approx(1.0)
