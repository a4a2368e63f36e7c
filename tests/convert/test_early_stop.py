"""Ending a long `edgecls convert` training early with Ctrl-C and still getting the exported, verified model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, ctrl_c_when, tensorflow_or_skip

pytestmark = pytest.mark.slow  # trains or converts real models


@pytest.fixture(scope="module", autouse=True)
def _tf():
    tensorflow_or_skip()


def test_a_taken_request_ends_training_with_the_best_checkpoint(shapes, tmp_path):
    import keras
    from edgecls.convert.data import scan
    from edgecls.convert.models import ModelSpec, create_model
    from edgecls.convert.training import StopRequest, TrainConfig, make_strategy, train

    keras.utils.set_random_seed(0)
    dataset = scan(shapes, input_size=(32, 32), channels=3, seed=0)
    model = create_model("compact-cnn", ModelSpec(num_classes=3, input_size=32, width=8, depth=1))
    request = StopRequest()
    assert request.request() is False  # nothing is training: the caller must interrupt instead

    class Observer:
        def stage(self, name: str, epochs: int) -> None:
            pass

        def epoch(self, stage: str, epoch: int, epochs: int, logs: dict) -> None:
            if epoch == 2:
                assert request.request() is True  # as a first Ctrl-C during training would
                assert request.request() is False  # a second one interrupts

    history = train(
        model,
        dataset,
        TrainConfig(epochs=8, batch_size=8, augment=0.0),
        sigmoid=False,
        checkpoint_dir=tmp_path / "ckpt",
        strategy=make_strategy("default"),
        observer=Observer(),
        stop_request=request,
    )
    stopped = history["stopped_early"]
    # The request came at the end of epoch 2; epoch 3 ran one batch, was validated, and training ended.
    assert stopped["stage"] == "train" and stopped["epoch"] == 3 and stopped["epochs"] == 8
    assert len(history["loss"]) == len(history["val_loss"]) == 3
    best = int(np.argmin(history["val_loss"]))
    assert stopped["best_epoch"] == best + 1 == history["stages"][0]["kept_epoch"]
    saved = keras.models.clone_model(model)
    saved.load_weights(tmp_path / "ckpt" / "best-train.weights.h5")
    for a, b in zip(model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_first_ctrl_c_in_training_exports_the_best_model_so_far(shapes, tmp_path):
    out = tmp_path / "run"
    code, output = ctrl_c_when(
        ["convert", shapes, "--out", out, *TINY, "--epochs", "200"],
        lambda line: line.strip().startswith("train   2/200"),
    )
    assert code == 0, output
    assert "stopping training after this batch" in output and "Traceback" not in output
    report = json.loads((out / "report.json").read_text())
    stopped = report["history"]["stopped_early"]
    assert stopped["stage"] == "train" and 3 <= stopped["epoch"] < 200
    assert len(report["history"]["loss"]) == stopped["epoch"]
    assert "stopped early by the user" in (out / "report.md").read_text()
    assert report["int8"]["top1"] > 0 and (out / "model.tflite").stat().st_size > 0
    classify = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecls",
            "classify",
            str(out / "model.tflite"),
            str(next(Path(shapes).rglob("*.png"))),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert classify.returncode == 0, classify.stderr


def test_ctrl_c_outside_training_still_interrupts(shapes, tmp_path):
    out = tmp_path / "run"
    code, output = ctrl_c_when(
        ["convert", shapes, "--out", out, *TINY], lambda line: "exporting" in line
    )  # training is over: nothing to end early
    assert code == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert not (out / "model.tflite").exists()
