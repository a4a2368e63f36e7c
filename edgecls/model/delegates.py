"""Hardware delegates: the Coral Edge TPU and any external TFLite delegate library.

A delegate that was asked for and cannot load is an error naming the cause and the fix; edgecls never falls back to
the CPU on its own (``allow_cpu_fallback=True`` makes it a loud warning instead, see `Classifier`).

With ``delegate="edgetpu"``, a model ``NAME.tflite`` that has a compiled sibling ``NAME_edgetpu.tflite`` runs from the
sibling. ``EDGECLS_EDGETPU_LIBRARY`` names a libedgetpu in a non-standard place.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import ConfigError, DelegateError, ModelError
from edgecls.model.backends import Backend
from edgecls.model.metadata import EDGETPU_CUSTOM_OP, ModelFileInfo

EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
LIBRARY_ENV = "EDGECLS_EDGETPU_LIBRARY"
DEVICE_FORMS = "usb, usb:N, pci, pci:N or :N (the Nth Edge TPU of any kind)"
_DEVICE = re.compile(r"^(usb|pci)?(:\d+)?$")


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
        f"{model.path} is compiled for the Edge TPU (it holds {EDGETPU_CUSTOM_OP}) and cannot run on the CPU; "
        "use --delegate edgetpu with a Coral device, or the CPU model (the same name without _edgetpu)"
    )


def check_device(device: str) -> str:
    """Validate an Edge TPU device string (``usb``, ``usb:0``, ``pci``, ``pci:1``, ``:0``)."""
    text = device.strip().lower()
    if not text or not _DEVICE.match(text):
        raise ConfigError(f"unknown Edge TPU device {device!r}; expected {DEVICE_FORMS}")
    return text


def edgetpu_library() -> str:
    """The Edge TPU runtime library on this platform (``EDGECLS_EDGETPU_LIBRARY`` overrides it)."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    system = platform.system()
    if system not in EDGETPU_LIBRARIES:
        raise DelegateError(f"the Edge TPU runtime is not available for {system}; supported: Linux, macOS, Windows")
    return EDGETPU_LIBRARIES[system]


def resolve(
    delegate: Any,
    *,
    device: str | None,
    model: ModelFileInfo,
    backend: Backend,
    options: dict[str, str] | None = None,
) -> LoadedDelegate | None:
    """Turn the ``delegate=`` argument into a loaded delegate (or None for the CPU).

    ``options`` go to the delegate library as its key/value options (libedgetpu: ``device``, ``performance``...).
    """
    options = {str(k): str(v) for k, v in (options or {}).items()}
    if delegate is None:
        if device is not None:
            raise ConfigError(f"device={device!r} was given without a delegate; add delegate='edgetpu'")
        if options:
            raise ConfigError("delegate options were given without a delegate; add delegate='edgetpu' or a library")
        return None
    if delegate == "edgetpu":
        if device is not None:
            options["device"] = check_device(device)
        return _load(backend, "edgetpu", edgetpu_library(), options)
    if device is not None:
        raise ConfigError(f"device={device!r} is an Edge TPU option; it needs delegate='edgetpu'")
    if isinstance(delegate, (str, os.PathLike)):
        return _load(backend, "external", os.fspath(delegate), options)
    return LoadedDelegate("object", None, {}, delegate)


def interpreter_error(delegate: LoadedDelegate, model: ModelFileInfo, message: str) -> DelegateError:
    """The error for an interpreter that could not take the model with ``delegate`` attached."""
    name = delegate.library or "the delegate"
    if "runtime version" in message or "newer than this runtime" in message:
        return DelegateError(
            f"{model.path} was compiled for a newer Edge TPU runtime than {name} ({message}); upgrade the runtime "
            "(sudo apt-get install --only-upgrade libedgetpu1-std) or recompile with "
            "edgetpu_compiler --min_runtime_version set to this runtime's version"
        )
    if EDGETPU_CUSTOM_OP in message:
        return DelegateError(
            f"{name} loaded but did not take {EDGETPU_CUSTOM_OP} in {model.path}; it is not a working Edge TPU "
            f"runtime: install libedgetpu1-std, or point {LIBRARY_ENV} at libedgetpu.so.1"
        )
    return DelegateError(
        f"the {delegate.kind} delegate ({name}) could not take {model.path} ({message}); run without --delegate to "
        "check the model on the CPU"
    )


def _load(backend: Backend, kind: str, library: str, options: dict[str, str]) -> LoadedDelegate:
    try:
        # Open the library ourselves first: the runtimes' Delegate objects print a traceback from __del__ when the
        # library is missing, and the user should see one clear line instead.
        lib = ctypes.CDLL(library)
        if not hasattr(lib, "tflite_plugin_create_delegate"):
            raise DelegateError(
                f"{library} is not a TFLite delegate library (it has no tflite_plugin_create_delegate); pass the "
                "delegate's .so (e.g. libedgetpu.so.1) or 'edgetpu'"
            )
        handle = backend.load_delegate(library, options)
    except OSError as exc:
        reason = _flat(exc)
        if kind == "edgetpu":
            raise DelegateError(
                f"the Edge TPU runtime library {library} was not found ({reason}); install it from the Coral package "
                "repository: sudo apt-get install libedgetpu1-std"
            ) from None
        raise DelegateError(f"delegate library {library} cannot be loaded ({reason}); check the path") from None
    except (ValueError, AttributeError, RuntimeError) as exc:
        reason = _flat(exc)
        if kind == "edgetpu":
            where = f" at {options['device']}" if options.get("device") else ""
            raise DelegateError(
                f"the Edge TPU delegate failed to start ({reason}): no Edge TPU device found{where}; plug in the "
                "accelerator (USB 3 port), check `lsusb` or /dev/apex_0, and that libedgetpu matches the compiler"
            ) from None
        raise DelegateError(f"delegate library {library} failed to start ({reason}); check its options") from None
    return LoadedDelegate(kind, library, options, handle)


def _flat(exc: BaseException) -> str:
    """An exception's message on one line (the runtimes append the library's own report on a second line)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
