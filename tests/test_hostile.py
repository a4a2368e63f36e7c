"""Hostile and odd input: models that are not classifiers, unreadable files and symlink loops in batches, huge
images, FIFOs, CLI misuse. Each ends in one `error:` line per bad item and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecls.cli import app

runner = CliRunner()
MODEL = "mobilenet_v1_0.25_128_quant.tflite"


def cli(*args):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and not (
        result.exception and not isinstance(result.exception, SystemExit)
    ), result.output
    return result


@pytest.mark.parametrize("kind, says", [
    ("segmentation", "a map per pixel (a segmentation model"),
    ("pose", "keypoints (a pose model"),
    ("sequence", "a sequence model"),
    ("detector", "it has 4 outputs"),
])
def test_models_that_are_not_classifiers_are_refused_and_still_described(non_classifiers, coral, kind, says):
    path = non_classifiers[kind]
    refused = cli("classify", path, coral / "cat.bmp")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 1 and len(errors) == 1 and "not an image classifier" in errors[0] and says in errors[0]
    run = cli("run", path, "--source", "demo", "--max-frames", "2")
    assert run.exit_code == 1 and "not an image classifier" in run.stderr
    info = cli("info", path)
    assert info.exit_code == 0 and "NOT an image classifier" in info.stdout and says in info.stdout
    facts = json.loads(cli("info", path, "--json").stdout)
    assert says in facts["not_a_classifier"] and facts["outputs"]
