"""TFLite interpreter backends: find one, import it lazily, and say which one is in use.

Order of preference for ``backend="auto"``: ``ai_edge_litert`` (the maintained LiteRT runtime, XNNPACK on by
default), ``tflite_runtime`` (the legacy runtime: Python <= 3.11 and numpy < 2 only), then ``tensorflow`` (the full
TensorFlow package, which is heavy; only used when nothing lighter is installed or when asked for by name).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecls.errors import BackendError

log = logging.getLogger(__name__)

BACKEND_NAMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")

_INSTALL_HINT = {
    "ai_edge_litert": "pip install ai-edge-litert",
    "tflite_runtime": "pip install 'edgecls[tflite-runtime]' (needs Python <= 3.11 and numpy < 2)",
    "tensorflow": "pip install tensorflow-cpu",
}


@dataclass(frozen=True)
class Backend:
    """An importable interpreter backend. ``version`` is ``known_version``, or the installed version of the
    distribution ``dist``, read when first asked for: importlib.metadata (and the email package it brings) would
    cost every command 15 ms to import, and only `edgecls info`, `bench` and `doctor` say the version."""

    name: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]
    dist: str | None = None
    known_version: str | None = None

    @functools.cached_property
    def version(self) -> str:
        if self.known_version is not None:
            return self.known_version
        return _dist_version(self.dist) if self.dist else "unknown"

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _import_backend(name: str) -> Backend:
    if name == "ai_edge_litert":
        module = importlib.import_module("ai_edge_litert.interpreter")
        return Backend(name, module.Interpreter, module.load_delegate, dist="ai-edge-litert")
    if name == "tflite_runtime":
        module = importlib.import_module("tflite_runtime.interpreter")
        return Backend(name, module.Interpreter, module.load_delegate, dist="tflite-runtime")
    if name == "tensorflow":
        tf = importlib.import_module("tensorflow")
        return Backend(name, tf.lite.Interpreter, tf.lite.experimental.load_delegate, known_version=tf.__version__)
    raise BackendError(f"unknown backend {name!r}: expected 'auto' or one of {', '.join(BACKEND_NAMES)}")


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def resolve_backend(name: str = "auto") -> Backend:
    """Import and return the interpreter backend ``name`` (``"auto"`` picks the first importable one).

    >>> resolve_backend("auto").name  # doctest: +SKIP
    'ai_edge_litert'
    """
    if name != "auto":
        if name not in BACKEND_NAMES:
            raise BackendError(f"unknown backend {name!r}: expected 'auto' or one of {', '.join(BACKEND_NAMES)}")
        try:
            return _import_backend(name)
        except Exception as exc:  # ImportError, or numpy ABI errors from tflite_runtime under numpy 2
            raise BackendError(
                f"backend {name!r} cannot be imported ({type(exc).__name__}: {_first_line(exc)}); "
                f"install it with: {_INSTALL_HINT[name]}"
            ) from exc
    problems = []
    for candidate in BACKEND_NAMES:
        try:
            backend = _import_backend(candidate)
        except Exception as exc:
            problems.append(f"{candidate}: {type(exc).__name__}")
            continue
        if candidate == "tensorflow":
            log.warning(
                "using the full TensorFlow package as interpreter; install ai-edge-litert for a lighter runtime"
            )
        return backend
    raise BackendError(
        "no TFLite interpreter is installed (" + "; ".join(problems) + "); install one with: pip install ai-edge-litert"
    )


def available_backends() -> dict[str, str]:
    """Map every backend name to its version, or to why it cannot be imported (used by `edgecls doctor`).

    The light runtimes are imported (an import that fails, e.g. tflite-runtime under numpy 2, is the finding);
    TensorFlow is only looked up, since importing it takes seconds.
    """
    import importlib.util

    found = {}
    for name in BACKEND_NAMES:
        if name == "tensorflow":
            found[name] = (
                (
                    _dist_version("tensorflow")
                    if _dist_version("tensorflow") != "unknown"
                    else _dist_version("tensorflow-cpu")
                )
                if importlib.util.find_spec("tensorflow")
                else "not available (not installed)"
            )
            continue
        try:
            found[name] = _import_backend(name).version
        except Exception as exc:
            found[name] = f"not available ({type(exc).__name__}: {_first_line(exc)})"
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def op_counts(backend: Backend, model_path: str) -> dict[str, int]:
    """Count the model's operators by name, as written in the file (before any delegate rewrites the graph).

    Works for models that cannot run here (e.g. Edge TPU builds); returns {} when the backend cannot tell.
    """
    from collections import Counter

    module = importlib.import_module(backend.interpreter_class.__module__)
    resolver = getattr(module, "OpResolverType", None)
    kwargs: dict[str, Any] = {"model_path": model_path}
    if resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = backend.interpreter_class(**kwargs)
        ops = Counter(str(op.get("op_name", "?")) for op in interpreter._get_ops_details())
    except Exception:  # an op summary is a nicety, never a reason to fail
        return {}
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
