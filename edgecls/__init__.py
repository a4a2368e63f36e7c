"""edgecls: run int8 TFLite image classifiers on small devices, fast.

``import edgecls`` is light: the names below load on first use, so scripts and the CLI start quickly and nothing
heavy (TensorFlow, OpenCV) is ever imported by the runtime on its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Library logging is silent unless the application configures it (the CLI prints warnings on stderr).
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "Classifier": "edgecls.model.classifier",
    "ClassifierConfig": "edgecls.model.classifier",
    "Timing": "edgecls.model.classifier",
    "Prediction": "edgecls.model.postprocess",
    "PreprocessConfig": "edgecls.model.preprocess",
    "InputSpec": "edgecls.model.preprocess",
    "read_image": "edgecls.model.images",
    "Stream": "edgecls.live.stream",
    "StreamConfig": "edgecls.live.stream",
    "StreamResult": "edgecls.live.stream",
    "StreamStats": "edgecls.live.stream",
    "Latency": "edgecls.live.stream",
    "StreamEvent": "edgecls.live.capture",
    "Smoothing": "edgecls.live.smoothing",
    "Decision": "edgecls.live.smoothing",
    "FrameSource": "edgecls.live.sources",
    "parse_source": "edgecls.live.sources",
    "SourceConfig": "edgecls.live.sources",
    "PicameraOptions": "edgecls.live.sources",
    "parse_sink": "edgecls.sinks.spec",
    "SinkOptions": "edgecls.sinks.spec",
    "register_sink": "edgecls.sinks.spec",
    "load_profile": "edgecls.device.profiles",
    "Profile": "edgecls.device.profiles",
    "preflight": "edgecls.device.edgetpu",
    "benchmark": "edgecls.device.bench",
    "SinkError": "edgecls.errors",
    "EdgeclsError": "edgecls.errors",
    "ModelError": "edgecls.errors",
    "BackendError": "edgecls.errors",
    "DelegateError": "edgecls.errors",
    "LabelsError": "edgecls.errors",
    "ImageError": "edgecls.errors",
    "CameraError": "edgecls.errors",
    "DataError": "edgecls.errors",
    "ConfigError": "edgecls.errors",
}

__all__ = ["__version__", *_LAZY]  # noqa: PLE0604 - the lazily imported names, all strings

if TYPE_CHECKING:  # pragma: no cover
    from edgecls.device.bench import benchmark
    from edgecls.device.edgetpu import preflight
    from edgecls.device.profiles import Profile, load_profile
    from edgecls.errors import (
        BackendError,
        CameraError,
        ConfigError,
        DataError,
        DelegateError,
        EdgeclsError,
        ImageError,
        LabelsError,
        ModelError,
        SinkError,
    )
    from edgecls.live.capture import StreamEvent
    from edgecls.live.smoothing import Decision, Smoothing
    from edgecls.live.sources import FrameSource, PicameraOptions, SourceConfig, parse_source
    from edgecls.live.stream import Latency, Stream, StreamConfig, StreamResult, StreamStats
    from edgecls.model.classifier import Classifier, ClassifierConfig, Timing
    from edgecls.model.images import read_image
    from edgecls.model.postprocess import Prediction
    from edgecls.model.preprocess import InputSpec, PreprocessConfig
    from edgecls.sinks.spec import SinkOptions, parse_sink, register_sink


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'edgecls' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
