"""edgecls.convert: the host side (TensorFlow). Train a compact CNN or a MobileNet transfer model on a folder of
images, export a fully int8 TFLite model, and verify it against the float model before calling the job done.

    from edgecls.convert import train
    result = train("photos/", "run", arch="mobilenet_v2")

`train`, `quantize` (a Keras model trained elsewhere) and `demo` return a frozen `ConvertResult`. Importing this
package is cheap; TensorFlow loads when one of them runs. Needs the ``convert`` extra: pip install 'edgecls[convert]'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import ConvertResult, WorkerResult, demo, quantize, train

_LAZY = ("ConvertResult", "WorkerResult", "train", "quantize", "demo", "OPTION_NAMES")
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecls.convert' has no attribute {name!r}")
