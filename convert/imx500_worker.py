"""The part of the IMX500 export that runs inside the toolchain's environment (TensorFlow 2.15, tf.keras, the Model
Compression Toolkit), never in edgecls's own: ``TOOLCHAIN/bin/python imx500_worker.py JOB_DIR``.

edgecls.convert.imx500 writes JOB_DIR/job.json (the registry architecture and its ModelSpec, the steps to run),
weights.npz (the Keras 3 model's weights, layer by layer) and the images as .npy files. This script

1. rebuilds the same architecture from the one registry (convert/models.py, loaded from its file: edgecls is not
   installed here) with tf.keras, every ``Rescaling`` written as plain tensor ops (the IMX500 converter refuses the
   layer), and copies the weights in;
2. ``float``: runs the rebuilt float model on test.npy (the host checks it against the Keras 3 model);
3. ``quantize``: post-training quantisation for the IMX500 (MCT's imx500 target platform) calibrated on
   calibration.npy, runs the quantised model (MCT's fake-quant Keras model) on test.npy, and exports it as
   model_mct.keras for imxconv-tf;

and writes result.json ({"error": "..."} when it fails). Progress lines start with ``edgecls-progress: ``.
It imports nothing of the host's environment, and runs on Python 3.10 and 3.11.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROGRESS = "edgecls-progress: "
BATCH = 32


class WorkerError(Exception):
    """A failure whose message is for the user as it is."""


def say(message: str) -> None:
    print(PROGRESS + message, flush=True)


def load_registry(job: dict[str, Any]) -> Any:
    """convert/models.py and the edgecls.errors it imports, loaded from their files under private names."""
    package = types.ModuleType("edgecls")
    package.__path__ = []  # a package with nothing else in it: no other part of edgecls can load here
    sys.modules["edgecls"] = package
    package.errors = _load_file("edgecls.errors", job["errors_py"])  # type: ignore[attr-defined]
    return _load_file("edgecls_imx500_registry", job["models_py"])


def _load_file(name: str, path: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise WorkerError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def scaling_ops(scale: float, offset: float = 0.0, **_: Any) -> Any:
    """What ``Rescaling(scale, offset)`` computes, as tensor ops (a multiply and an add in the graph): the layer
    itself is refused by imxconv-tf ("[USOP] unsupported ops: ... Rescaling")."""

    def apply(x: Any) -> Any:
        x = x * float(scale)
        return x + float(offset) if offset else x

    return apply


class _Forward:
    """``target``'s attributes, except those in ``replaced``."""

    def __init__(self, target: Any, **replaced: Any) -> None:
        self._target = target
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@contextlib.contextmanager
def rescaling_as_ops(tf_keras: Any) -> Iterator[Any]:
    """A Keras for models.built_with whose ``layers.Rescaling`` is `scaling_ops`; the MobileNetV3 builder (which adds
    its own Rescaling) is pointed at it too while the block runs."""
    from keras.src.applications import mobilenet_v3

    layers = _Forward(tf_keras.layers, Rescaling=scaling_ops)
    original = mobilenet_v3.layers
    mobilenet_v3.layers = _Forward(original, Rescaling=scaling_ops)
    try:
        yield _Forward(tf_keras, layers=layers)
    finally:
        mobilenet_v3.layers = original


def weighted_layers(model: Any) -> list[Any]:
    """The layers that hold weights, nested models flattened, in the model's order."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found += weighted_layers(layer)
        elif layer.weights:
            found.append(layer)
    return found


def all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found += all_layers(layer) if hasattr(layer, "layers") else [layer]
    return found


def rebuild(job: dict[str, Any], job_dir: Path) -> Any:
    """The tf.keras twin of the Keras 3 model: the registry's architecture, Rescaling as ops, the weights copied."""
    import tensorflow as tf

    registry = load_registry(job)
    spec = registry.ModelSpec(**job["spec"])
    with rescaling_as_ops(tf.keras) as keras, registry.built_with(keras):
        model = registry.create_model(job["arch"], spec)
    left = [layer.name for layer in all_layers(model) if type(layer).__name__ == "Rescaling"]
    if left:
        raise WorkerError(f"the rebuilt {job['arch']} still has Rescaling layers {left}")
    targets = weighted_layers(model)
    sources = job["layers"]
    if len(targets) != len(sources):
        raise WorkerError(
            f"the rebuilt {job['arch']} has {len(targets)} layers with weights, the trained model "
            f"{len(sources)}: the run's settings do not describe its model.keras"
        )
    with np.load(job_dir / "weights.npz") as stored:
        for layer, source in zip(targets, sources):
            arrays = [stored[key] for key in source["keys"]]
            shapes = [tuple(w.shape) for w in layer.get_weights()]
            if type(layer).__name__ != source["class"] or shapes != [a.shape for a in arrays]:
                raise WorkerError(
                    f"layer {source['name']!r} ({source['class']}, {[a.shape for a in arrays]}) does not "
                    f"match the rebuilt {layer.name!r} ({type(layer).__name__}, {shapes})"
                )
            layer.set_weights(arrays)
    return model


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    rows = [
        np.asarray(model(images[i : i + BATCH].astype(np.float32), training=False))
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, *model.output_shape[1:]), np.float32)


def quantize(model: Any, job_dir: Path) -> Any:
    """MCT post-training quantisation for the IMX500, calibrated on calibration.npy (uint8 images)."""
    import model_compression_toolkit as mct

    calibration = np.load(job_dir / "calibration.npy")

    def representative() -> Iterator[list[np.ndarray]]:
        for start in range(0, len(calibration), BATCH):
            yield [calibration[start : start + BATCH].astype(np.float32)]

    tpc = mct.get_target_platform_capabilities("tensorflow", "imx500", target_platform_version="v1")
    quantized, _ = mct.ptq.keras_post_training_quantization(model, representative, target_platform_capabilities=tpc)
    return quantized


def run(job: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    import model_compression_toolkit as mct
    import tensorflow as tf

    started = time.perf_counter()
    from importlib.metadata import version

    result: dict[str, Any] = {
        "versions": {
            "imx500_converter": version("imx500-converter"),
            "mct": mct.__version__,
            "tensorflow": tf.__version__,
            "python": sys.version.split()[0],
        },
        "seconds": {},
    }
    say(f"rebuilding {job['arch']} in tf.keras (TensorFlow {tf.__version__})")
    model = rebuild(job, job_dir)
    result["layers"] = [type(layer).__name__ for layer in all_layers(model)]
    test = np.load(job_dir / "test.npy")
    if "float" in job["steps"]:
        np.save(job_dir / "float.npy", predict(model, test))
    result["seconds"]["rebuild"] = round(time.perf_counter() - started, 1)
    if "quantize" in job["steps"]:
        t = time.perf_counter()
        say(
            f"quantising for the IMX500 (MCT {mct.__version__}, post-training, "
            f"{len(np.load(job_dir / 'calibration.npy', mmap_mode='r'))} calibration images)"
        )
        quantized = quantize(model, job_dir)
        result["seconds"]["quantize"] = round(time.perf_counter() - t, 1)
        say(f"running the IMX500-quantised model on {len(test)} held-out images")
        np.save(job_dir / "quantized.npy", predict(quantized, test))
        mct.exporter.keras_export_model(model=quantized, save_model_path=str(job_dir / "model_mct.keras"))
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: imx500_worker.py JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[1])
    try:
        job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
        result = run(job, job_dir)
    except WorkerError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # reported to the host, which names the log
        result = {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "traceback": traceback.format_exc()}
    tmp = job_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, job_dir / "result.json")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
