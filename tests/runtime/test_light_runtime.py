"""The device runtime stays light: no TensorFlow, Keras, torch or OpenCV unless they are really needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "torch", "cv2", "tf_keras")


def imported_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(m for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(out.split())


def test_import_edgecls_imports_nothing_heavy_not_even_numpy():
    modules = imported_after("import edgecls")
    assert not modules & {*HEAVY, "numpy", "PIL", "typer"}, modules & {*HEAVY, "numpy", "PIL", "typer"}


def test_classifying_never_imports_tensorflow(coral):
    modules = imported_after(
        "import edgecls\n"
        f"clf = edgecls.Classifier({str(coral / 'mobilenet_v2_1.0_224_quant.tflite')!r})\n"
        f"clf.classify({str(coral / 'cat.bmp')!r})"
    )
    assert not modules & {"tensorflow", "keras", "torch", "tf_keras"}


def test_the_runtime_package_has_no_tensorflow_import_statement():
    offenders = []
    for path in (ROOT / "edgecls").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import tensorflow", "from tensorflow", "import keras", "from keras")):
                offenders.append(f"{path.name}:{number}")
    assert offenders == []  # backends.py reaches tensorflow only through importlib, as the last fallback


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_cli_help_is_quick_to_import():
    modules = imported_after("import edgecls.cli.app")
    assert "numpy" not in modules and "cv2" not in modules
