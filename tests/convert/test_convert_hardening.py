"""convert against interruptions and odd input: the output folder holds one whole run (old or new, never a mix),
labels round-trip whatever the class names, an Edge TPU build must belong to its CPU model, the gate checks
agreement and says when the test split is too small, and exit codes tell a failed gate from an error."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY as PLUMBING, convert, ctrl_c_when, one_error_line, tensorflow_or_skip

# Enough training that the colour classes are learned (a model no better than guessing fails the gate).
TINY = [*PLUMBING, "--epochs", "10", "--learning-rate", "0.01", "--batch-size", "4"]

pytestmark = [pytest.mark.usefixtures("_tf"), pytest.mark.slow]  # trains or converts real models


@pytest.fixture(scope="module")
def _tf():
    tensorflow_or_skip()


def dataset(root: Path, names: tuple[str, ...], per_class: int = 10) -> Path:
    """Classes told apart by their dominant colour channel (as many classes as names, up to three)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            pixels[..., c % 3] += 160
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A finished 3-class run, with a stale Edge TPU build and a checkpoint left beside it."""
    root = tmp_path_factory.mktemp("old")
    data = dataset(root / "data3", ("circle", "square", "stripes"))
    out = root / "run"
    result = convert(data, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return data, out


def fresh_copy(old_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(old_run[1], out)
    return out


def test_a_finished_run_is_refused_without_overwrite_and_other_folders_always(old_run, tmp_path):
    out = fresh_copy(old_run, tmp_path)
    before = digest(out)
    assert "already holds a finished run; pass --overwrite" in one_error_line(convert(old_run[0], "--out", out, *TINY))
    assert digest(out) == before
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not ours")
    for extra in ([], ["--overwrite"]):
        line = one_error_line(convert(old_run[0], "--out", mine, *TINY, *extra))
        assert "holds other files, not an edgecls run" in line
    assert (mine / "holiday.jpg").read_bytes() == b"not ours"


def test_overwrite_replaces_the_whole_run_and_no_stale_file_survives(old_run, tmp_path):
    out = fresh_copy(old_run, tmp_path)
    (out / "model_edgetpu.tflite").write_bytes((out / "model.tflite").read_bytes())  # an old Edge TPU build
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "best-train.weights.h5").write_bytes(b"old")
    data4 = dataset(tmp_path / "data4", ("circle", "square", "stripes", "star"))
    result = convert(data4, "--out", out, *TINY, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "model_edgetpu.tflite").exists() and not (out / "checkpoints").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["circle", "square", "star", "stripes"]
    assert (out / "labels.txt").read_text().split() == report["classes"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no staging folder left


def test_an_interrupt_while_writing_the_report_leaves_the_old_run_whole(old_run, tmp_path, monkeypatch):
    """Ctrl-C as the report is written (in-process, at a known point), then as a real process during the export."""
    from edgecls.convert import report as reporting

    out = fresh_copy(old_run, tmp_path)
    before = digest(out)
    data4 = dataset(tmp_path / "data4", ("circle", "square", "stripes", "star"))

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(reporting, "plot_curves", interrupted)
        result = convert(data4, "--out", out, *TINY, "--overwrite")
    assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
    assert digest(out) == before  # the old 3-class run, every file of it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]

    code, output = ctrl_c_when(["convert", data4, "--out", out, *TINY, "--overwrite"],
                               lambda line: "exporting" in line)
    assert "Traceback" not in output
    if code == 130:
        assert digest(out) == before
    else:  # the signal came after the swap: then the folder is the whole new run
        assert code == 0 and json.loads((out / "report.json").read_text())["classes"][2] == "star"


def test_class_names_that_look_like_ids_round_trip(tmp_path):
    """Folders named `1 apple`, `2 banana`: labels.txt reads back as those names (it used to read as id lines
    and fail), and `classify --labels labels.txt` and deploy accept it."""
    from edgecls import Classifier
    from edgecls.labels import read_labels_file

    data = dataset(tmp_path / "fruit", ("1 apple", "2 banana"))
    out = tmp_path / "run"
    result = convert(data, "--out", out, *TINY)
    assert result.exit_code in (0, 3), result.output  # the gate's verdict does not matter here: the files do
    labels = out / "labels.txt"
    with Classifier(out / "model.tflite", labels=labels) as clf:
        assert clf.labels.names == ("1 apple", "2 banana") or list(clf.labels.names) == ["1 apple", "2 banana"]
    parsed = read_labels_file(labels)
    assert list(parsed.values() if isinstance(parsed, dict) else parsed) == ["1 apple", "2 banana"]
    with Classifier(out / "model.tflite") as clf:  # from the embedded metadata
        assert list(clf.labels.names) == ["1 apple", "2 banana"]


def test_an_edge_tpu_build_of_another_model_is_refused(coral, tmp_path):
    from edgecls import Classifier
    from edgecls.errors import ModelError

    shutil.copy(coral / "mobilenet_v1_0.5_160_quant.tflite", tmp_path / "model.tflite")
    shutil.copy(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", tmp_path / "model_edgetpu.tflite")
    with pytest.raises(ModelError, match="model_edgetpu.tflite does not belong to .*inputs and outputs differ"):
        Classifier(tmp_path / "model.tflite", delegate="edgetpu")


def test_the_gate_wants_agreement_and_knows_what_one_image_is_worth(old_run):
    from edgecls.convert.pipeline import ConvertOptions, gate_failures

    class Data:
        def counts(self, part):  # type: ignore[no-untyped-def]
            return {"a": 10, "b": 10, "c": 10}

    metrics = {"drop_points": 0.0, "agreement": 0.0, "float": {"top1": 0.4}}  # a 1-epoch model: same top-1, never agreeing
    failures = gate_failures(metrics, ConvertOptions(out_dir=Path("x")), Data(), trained=True)
    assert len(failures) == 1 and "agree on the top-1 class of 0.0%" in failures[0] and "--min-agreement 90%" in failures[0]
    assert not gate_failures({**metrics, "agreement": 0.95}, ConvertOptions(out_dir=Path("x")), Data(), trained=True)
    report = json.loads((old_run[1] / "report.json").read_text())
    assert report["test_images"] == 6 and report["points_per_image"] == pytest.approx(16.667, abs=0.01)
    first = (old_run[1] / "report.md").read_text().splitlines()[2]
    assert "one of the 6 test images is 16.67 points" in first
    # TINY allows a 100-point drop: measurable even on 6 images (the only warning is the advice on so few images)
    assert not [w for w in report["warnings"] if "one image is" in w]
    assert [w for w in report["warnings"] if "smallest class has" in w]


def test_ctrl_c_inside_the_tflite_converter_is_an_interruption(monkeypatch):
    from edgecls.convert.tflite_export import run_converter

    class Converter:
        def convert(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("ConverterError: <unknown>:0: error: KeyboardInterrupt")

    with pytest.raises(KeyboardInterrupt):
        run_converter(Converter(), "int8")
