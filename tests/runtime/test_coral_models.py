"""The runtime against Coral's published int8 models and their published expectations (../shared/data/coral)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls import Classifier
from edgecls.errors import DelegateError, ImageError, LabelsError, ModelError
from edgecls.model.images import read_image

# (model, image, expected index, top-k it must be in, minimum score): libcoral's model test cases
EXPECTATIONS = [
    ("mobilenet_v2_1.0_224_quant.tflite", "cat.bmp", 286, 3, 0.7),
    ("mobilenet_v1_0.5_160_quant.tflite", "cat.bmp", 286, 3, 0.5),
    ("mobilenet_v1_0.25_128_quant.tflite", "cat.bmp", 283, 3, 0.15),
    ("mobilenet_v2_1.0_224_quant.tflite", "hot_dog.jpg", 935, 1, 0.8),
    ("mobilenet_v2_1.0_224_quant.tflite", "dragonfly.bmp", 320, 1, 0.9),
]


def first_importable_backend() -> str:
    """What backend="auto" must pick: the first of the documented order (edgecls.model.backends) that imports."""
    import importlib

    for name, module in (
        ("ai_edge_litert", "ai_edge_litert.interpreter"),
        ("tflite_runtime", "tflite_runtime.interpreter"),
        ("tensorflow", "tensorflow"),
    ):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: S112 (tflite_runtime under numpy 2 fails with more than ImportError)
            continue
        return name
    raise AssertionError("no TFLite interpreter imports, yet a Classifier loaded")


@pytest.mark.parametrize("model, image, index, k, floor", EXPECTATIONS)
def test_published_expectations(coral, backend, model, image, index, k, floor):
    with Classifier(coral / model, backend=backend, num_threads=2) as clf:
        preds = clf.classify(coral / image, top_k=k)
    hit = [p for p in preds if p.index == index]
    assert hit, f"{index} not in top {k}: {preds}"
    assert hit[0].score >= floor
    assert [p.score for p in preds] == sorted((p.score for p in preds), reverse=True)


def test_labels_come_from_the_model_metadata(coral, backend):
    with Classifier(coral / "mobilenet_v2_1.0_224_quant.tflite", backend=backend) as clf:
        assert clf.labels is not None and clf.labels.source == "TFLite metadata (imagenet_labels.txt)"
        top = clf.classify(coral / "cat.bmp", top_k=1)[0]
        assert (top.index, top.label) == (286, "Egyptian cat")
        assert clf.backend.name == (backend if backend != "auto" else first_importable_backend())


def test_frames_in_bgr_rgba_and_gray_and_the_same_result_as_files(coral, backend):
    rgb = read_image(coral / "cat.bmp")
    with Classifier(coral / "mobilenet_v2_1.0_224_quant.tflite", backend=backend) as clf:
        from_file = clf.classify(coral / "cat.bmp", top_k=3)
        assert clf.classify(rgb, top_k=3) == from_file
        assert clf.classify(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr", top_k=3) == from_file
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        assert clf.classify(rgba, top_k=3) == from_file
        gray = clf.classify(read_image(coral / "cat.bmp", grayscale=True), top_k=5)
        assert len(gray) == 5 and all(0.0 <= p.score <= 1.0 for p in gray)
        assert clf.classify(rgb, top_k=1000, threshold=0.05) == [p for p in from_file if p.score >= 0.05]
        assert clf.last_timing is not None and clf.last_timing.invoke_ms > 0


def test_resize_modes_change_little_on_a_centered_subject(coral, backend):
    from edgecls.model.preprocess import PreprocessConfig

    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    for mode in ("center-crop", "letterbox"):
        with Classifier(model, backend=backend, preprocess=PreprocessConfig(resize=mode)) as clf:
            assert 286 in [p.index for p in clf.classify(coral / "cat.bmp", top_k=3)], mode


def test_model_that_fails_at_invoke(coral, backend):
    try:
        clf = Classifier(coral / "model_invoking_error.tflite", backend=backend)
    except ModelError as exc:  # some runtimes already refuse it when allocating
        assert "model_invoking_error.tflite" in str(exc)
        return
    with pytest.raises(ModelError, match="model_invoking_error.tflite"):
        clf.scores(np.zeros((8, 8, 3), np.uint8))


def test_truncated_and_foreign_files(coral, tmp_path, backend):
    data = (coral / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[:20000])
    with pytest.raises(ModelError, match="truncated.tflite"):
        Classifier(truncated, backend=backend)
    with pytest.raises(ModelError, match="not a TFLite model"):
        Classifier(coral / "cat.bmp", backend=backend)
    with pytest.raises(ModelError, match="not found"):
        Classifier(tmp_path / "missing.tflite", backend=backend)


def test_edgetpu_model_without_delegate_says_so(coral, backend):
    with pytest.raises(ModelError, match="compiled for the Edge TPU.*--delegate edgetpu"):
        Classifier(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", backend=backend)


def test_edgetpu_delegate_absent_is_a_clear_error(coral, backend):
    with pytest.raises(DelegateError, match="libedgetpu"):
        Classifier(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", backend=backend, delegate="edgetpu")


def test_labels_that_do_not_fit(coral, tmp_path, backend):
    labels = tmp_path / "five.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    with pytest.raises(LabelsError, match="5 entries but the model has 1001 classes"):
        Classifier(coral / "mobilenet_v2_1.0_224_quant.tflite", labels=labels, backend=backend)


def test_embedding_extractor_without_labels(coral, backend):
    with Classifier(coral / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", backend=backend) as clf:
        assert clf.labels is None
        preds = clf.classify(coral / "owl.jpg", top_k=2)
        assert preds[0].label == str(preds[0].index)


def test_bad_image_input(coral, backend):
    with Classifier(coral / "mobilenet_v1_0.25_128_quant.tflite", backend=backend) as clf:
        with pytest.raises(ImageError):
            clf.classify(np.zeros((10, 10), np.float64))
        with pytest.raises(ImageError, match="not found"):
            clf.classify(coral / "missing.jpg")


def test_threads_are_validated(coral):
    from edgecls.errors import ConfigError

    with pytest.raises(ConfigError, match="num_threads"):
        Classifier(coral / "mobilenet_v1_0.25_128_quant.tflite", num_threads=0)


@pytest.mark.parametrize("name", ["tensorflow"])
def test_tensorflow_backend_gives_the_same_answer(coral, name):
    pytest.importorskip("tensorflow", reason="the tensorflow backend needs the 'convert' extra")
    if __import__("os").environ.get("EDGECLS_TEST_BACKEND", "auto") != "auto":
        pytest.skip("checked in the main environment")
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    with Classifier(model, backend=name) as tf_clf, Classifier(model) as clf:
        assert tf_clf.backend.name == "tensorflow"
        a, b = tf_clf.classify(coral / "cat.bmp", top_k=3), clf.classify(coral / "cat.bmp", top_k=3)
        assert [p.index for p in a] == [p.index for p in b]
        assert all(abs(x.score - y.score) <= 0.02 for x, y in zip(a, b))
