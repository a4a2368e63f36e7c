"""Shared fixtures: the third-party data in ../shared/data, the backend under test, and tiny models built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGECLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CORAL = SHARED / "coral"
FLOWERS = SHARED / "flowers128"
WEIGHTS = SHARED / "weights"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Which interpreter backend the runtime tests use; test_legacy_runtime.py re-runs them with tflite_runtime.
BACKEND = os.environ.get("EDGECLS_TEST_BACKEND", "auto")


def require(path: Path, what: str) -> Path:
    """Return ``path``, or skip (fail under CI=true) when the shared data is absent."""
    if not path.exists():
        message = f"{what} not found at {path}; the shared third-party data (../shared/data) is needed"
        if IN_CI:
            pytest.fail(message + " and CI=true requires it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def coral() -> Path:
    return require(CORAL, "Coral test models")


@pytest.fixture(scope="session")
def flowers() -> Path:
    return require(FLOWERS, "flowers128 dataset")


@pytest.fixture(scope="session")
def backend() -> str:
    return BACKEND


def tensorflow_or_skip():  # type: ignore[no-untyped-def]
    """Import TensorFlow for building test models; it comes with the `convert` extra."""
    if BACKEND == "tflite_runtime":
        pytest.skip("models are built with TensorFlow, which the legacy tflite-runtime environment does not have")
    try:
        import tensorflow as tf
    except ImportError:
        if IN_CI:
            pytest.fail("TensorFlow (the 'convert' extra) is required under CI=true")
        pytest.skip("TensorFlow is not installed (pip install 'edgecls[convert]')")
    return tf


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny real TFLite models converted here with TensorFlow (see tests/model_factory.py)."""
    tensorflow_or_skip()
    from model_factory import build_all

    return build_all(tmp_path_factory.mktemp("models"))
