"""Hardware delegates: the Coral Edge TPU and any external TFLite delegate library.

A delegate that was asked for and cannot load is an error naming the cause and the fix; edgecls never falls back to
the CPU on its own.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend
from .errors import DelegateError, ModelError
from .metadata import ModelFileInfo

EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@dataclass(frozen=True)
class LoadedDelegate:
    """A delegate ready to hand to the interpreter, and what it was made from."""

    kind: str  # "edgetpu", "external" or "object"
    library: str | None
    options: dict[str, str] = field(default_factory=dict)
    handle: Any = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "library": self.library, "options": dict(self.options)}


def edgetpu_model_error(model: ModelFileInfo) -> ModelError:
    """The error for an Edge TPU build loaded without the Edge TPU delegate."""
    return ModelError(
        f"{model.path} is compiled for the Edge TPU (it holds edgetpu-custom-op) and cannot run on the CPU; "
        "use --delegate edgetpu with a Coral device, or the CPU model (the same name without _edgetpu)"
    )


def edgetpu_library() -> str:
    """The Edge TPU runtime library name on this platform."""
    system = platform.system()
    if system not in EDGETPU_LIBRARIES:
        raise DelegateError(f"the Edge TPU runtime is not available for {system}; supported: Linux, macOS, Windows")
    return EDGETPU_LIBRARIES[system]


def resolve(delegate: Any, *, device: str | None, model: ModelFileInfo, backend: Backend) -> LoadedDelegate | None:
    """Turn the ``delegate=`` argument into a loaded delegate (or None for the CPU)."""
    if delegate is None:
        if device is not None:
            raise DelegateError(f"device={device!r} was given without a delegate; add delegate='edgetpu'")
        return None
    if delegate == "edgetpu":
        options = {"device": device} if device else {}
        return _load(backend, "edgetpu", edgetpu_library(), options)
    if isinstance(delegate, (str, os.PathLike)):
        return _load(backend, "external", os.fspath(delegate), {})
    return LoadedDelegate("object", None, {}, delegate)


def _load(backend: Backend, kind: str, library: str, options: dict[str, str]) -> LoadedDelegate:
    try:
        # Open the library ourselves first: the runtimes' Delegate objects print a traceback from __del__ when the
        # library is missing, and the user should see one clear line instead.
        ctypes.CDLL(library)
        handle = backend.load_delegate(library, options)
    except OSError as exc:
        if kind == "edgetpu":
            raise DelegateError(
                f"the Edge TPU runtime library {library} was not found ({exc}); install it from the Coral package "
                "repository: sudo apt-get install libedgetpu1-std"
            ) from None
        raise DelegateError(f"delegate library {library} cannot be loaded ({exc}); check the path") from None
    except ValueError as exc:
        if kind == "edgetpu":
            where = f" at {options['device']}" if options.get("device") else ""
            raise DelegateError(
                f"the Edge TPU delegate failed to start ({exc}): no Edge TPU device found{where}; plug in the "
                "accelerator (USB 3 port), check `lsusb` or /dev/apex_0, and that libedgetpu matches the compiler"
            ) from None
        raise DelegateError(f"delegate library {library} failed to start ({exc}); check its options") from None
    return LoadedDelegate(kind, library, options, handle)
