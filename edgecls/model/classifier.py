"""`Classifier`: load a TFLite image classifier once, then classify frames and image files fast."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, DelegateError, ModelError, NotAClassifierError
from edgecls.model import delegates, metadata
from edgecls.model.backends import Backend, op_counts, resolve_backend
from edgecls.model.images import read_image
from edgecls.model.labels import Labels, find_labels
from edgecls.model.metadata import ModelFileInfo, check_model_file
from edgecls.model.postprocess import OutputSpec, Postprocessor, Prediction, predictions
from edgecls.model.preprocess import InputSpec, PreprocessConfig, Preprocessor
from edgecls.nativelog import quiet_native_stderr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Where the time of one classification went, in milliseconds."""

    preprocess_ms: float
    invoke_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.invoke_ms + self.postprocess_ms


MAX_THREADS = 256  # the interpreters take an int; no board has more cores


def default_num_threads() -> int:
    """Threads used when none are asked for: every core, at most 4 (more rarely helps small models)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ClassifierConfig:
    """How to open and rank a classifier, as one value built once and handed down (`Classifier.from_config`,
    `edgecls.Stream`). The fields are `Classifier`'s keyword arguments (see there), plus ``top_k``/``threshold``: the
    ranked predictions `Classifier.classify` returns by default. None means "not set": the built-in default, unless a
    device profile fills it (`edgecls.device.profiles.Profile.apply`); so does ``allow_cpu_fallback=False``.

    >>> ClassifierConfig(num_threads=2, top_k=3).backend is None  # None: "auto", the first importable backend
    True
    """

    labels: str | os.PathLike[str] | Sequence[str] | None = None
    num_threads: int | None = None
    delegate: Any = None
    device: str | None = None
    delegate_options: Mapping[str, str] | None = None
    allow_cpu_fallback: bool = False
    backend: str | None = None
    preprocess: PreprocessConfig | None = None
    top_k: int = 5
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.num_threads is not None and (
            not isinstance(self.num_threads, int) or not 1 <= self.num_threads <= MAX_THREADS
        ):
            raise ConfigError(f"num_threads must be between 1 and {MAX_THREADS} (received {self.num_threads!r})")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1 (received {self.top_k!r})")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1 (received {self.threshold!r})")
        if self.backend is not None and not isinstance(self.backend, str):
            raise ConfigError(f"backend must be a name such as 'auto' (received {self.backend!r})")
        if self.labels is not None and not isinstance(self.labels, (str, os.PathLike)):
            object.__setattr__(self, "labels", tuple(self.labels))  # a list given: frozen like the rest
        if self.delegate_options is not None:
            object.__setattr__(self, "delegate_options", MappingProxyType(dict(self.delegate_options)))


class Classifier:
    """An int8 (or float) TFLite image classifier, built once and reused for every frame.

    ``model``: path to a .tflite file. ``labels``: a label file or a list; by default they come from the model's
    edgecls manifest, its TFLite metadata, or a ``labels.txt`` beside it. ``num_threads``: interpreter threads
    (default: all cores, at most 4). ``delegate``: ``"edgetpu"``, a delegate library path, or a loaded delegate;
    ``device``: which Edge TPU (``usb``, ``usb:N``, ``pci:N``); ``delegate_options``: key/value options for the
    delegate library. A delegate that cannot load raises DelegateError, unless ``allow_cpu_fallback`` is set: then
    the CPU model runs and ``fallback_reason`` says why (logged as a warning).
    ``backend``: ``"auto"`` (or None), ``"ai_edge_litert"``, ``"tflite_runtime"`` or ``"tensorflow"``. ``preprocess``:
    resize mode, interpolation and normalisation (default: the model's manifest, else squash + bilinear).
    `from_config` opens one from a `ClassifierConfig`, whose ``top_k``/``threshold`` `classify` then uses when it is
    not told; ``config`` is the configuration it was opened with.

    >>> with Classifier("mobilenet_v2_1.0_224_quant.tflite") as clf:  # doctest: +SKIP
    ...     clf.classify("cat.bmp", top_k=3)[0].label
    'Egyptian cat'
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        labels: str | os.PathLike[str] | Sequence[str] | None = None,
        num_threads: int | None = None,
        delegate: Any = None,
        backend: str | None = None,
        device: str | None = None,
        delegate_options: Mapping[str, str] | None = None,
        allow_cpu_fallback: bool = False,
        preprocess: PreprocessConfig | None = None,
        activation: str | None = None,
        resize_engine: str = "auto",
    ) -> None:
        self.config = ClassifierConfig(  # checks every value, once
            labels=labels,
            num_threads=num_threads,
            delegate=delegate,
            device=device,
            delegate_options=delegate_options,
            allow_cpu_fallback=allow_cpu_fallback,
            backend=backend,
            preprocess=preprocess,
        )
        self.backend: Backend = resolve_backend(backend or "auto")
        self.num_threads = num_threads or default_num_threads()
        self.fallback_reason: str | None = None
        self.model_info: ModelFileInfo = self._model_to_run(model, delegate)
        self._open_interpreter(delegate, device, delegate_options, allow_cpu_fallback)
        self.path = self.model_info.path
        manifest = self.model_info.manifest or (self._source_info.manifest if self._source_info else None) or {}
        self.input_spec, self._input_index = self._input_details()
        self.output_spec, self._output_index = self._output_details()
        config = preprocess or PreprocessConfig.from_dict(manifest.get("preprocess", {}))
        self.preprocessor = Preprocessor(self.input_spec, config, engine=resize_engine)
        self.postprocessor = Postprocessor(
            self.output_spec, activation=activation or manifest.get("output", {}).get("activation", "auto")
        )
        self.labels: Labels | None = find_labels(self.model_info, self.output_spec.num_classes, labels)
        if self.labels is None and self._source_info is not None:
            self.labels = find_labels(self._source_info, self.output_spec.num_classes)
        self._input_view = self._interpreter.tensor(self._input_index)
        self._output_view = self._interpreter.tensor(self._output_index)
        self.last_timing: Timing | None = None
        self._log_opened(config.resize)

    def _log_opened(self, resize: str) -> None:
        spec = self.input_spec
        log.info(
            "%s: on %s%s, input %dx%dx%d %s, %d classes, labels from %s, resize %s",
            self.path.name,
            self.backend.name,
            f" with the {self.delegate.kind} delegate" if self.delegate is not None else "",
            spec.height,
            spec.width,
            spec.channels,
            spec.dtype,
            self.output_spec.num_classes,
            self.labels.source if self.labels else "nowhere (class indices are shown)",
            resize,
        )

    @classmethod
    def from_config(
        cls, model: str | os.PathLike[str], config: ClassifierConfig | None = None, **engine: Any
    ) -> Classifier:
        """Open ``model`` as ``config`` says (the default config when None); ``engine``: ``activation`` and
        ``resize_engine``, as in the constructor."""
        c = config or ClassifierConfig()
        clf = cls(
            model,
            labels=c.labels,
            num_threads=c.num_threads,
            delegate=c.delegate,
            backend=c.backend,
            device=c.device,
            delegate_options=c.delegate_options,
            allow_cpu_fallback=c.allow_cpu_fallback,
            preprocess=c.preprocess,
            **engine,
        )
        clf.config = c  # its top_k and threshold too
        return clf

    # -- construction -------------------------------------------------------------------------------------------

    def _model_to_run(self, model: str | os.PathLike[str], delegate: Any) -> ModelFileInfo:
        """With the Edge TPU asked for, NAME_edgetpu.tflite beside NAME.tflite is the model to run (when it belongs to
        it); labels and the manifest may live only in the CPU model (the compiler drops appended files), so that stays
        at hand as ``_source_info``. An Edge TPU build without a delegate is refused."""
        self._source_info: ModelFileInfo | None = None
        sibling = metadata.compiled_sibling(model) if delegate == "edgetpu" else None
        if sibling is not None:
            self._source_info = check_model_file(model)
            why = metadata.sibling_mismatch(self._source_info, check_model_file(sibling))
            if why:
                raise ModelError(
                    f"{sibling} does not belong to {model}: {why}; compile it again (edgetpu_compiler {Path(model).name})"
                    f" or remove it"
                )
        info = check_model_file(sibling or model)
        if delegate is None and info.has_edgetpu_op():
            raise delegates.edgetpu_model_error(info)
        return info

    def _open_interpreter(
        self, delegate: Any, device: str | None, delegate_options: Mapping[str, str] | None, allow_cpu_fallback: bool
    ) -> None:
        """The interpreter for `model_info`, with the delegate resolved; on the CPU instead when the delegate fails
        and ``allow_cpu_fallback`` allows it."""
        try:
            self.delegate = delegates.resolve(
                delegate,
                device=device,
                model=self.model_info,
                backend=self.backend,
                options=dict(delegate_options) if delegate_options is not None else None,
            )
            self._interpreter = self._build_interpreter()
        except DelegateError as exc:
            if not allow_cpu_fallback:
                raise
            self._fall_back_to_cpu(exc)

    def _fall_back_to_cpu(self, exc: DelegateError) -> None:
        """``allow_cpu_fallback``: run on the CPU, loudly (a warning logged, and `fallback_reason` set)."""
        self.fallback_reason = str(exc)
        self.delegate = None
        if self.model_info.has_edgetpu_op():
            cpu = self._source_info.path if self._source_info else metadata.cpu_sibling(self.model_info.path)
            if cpu is None:
                raise DelegateError(
                    f"{exc}; and there is no CPU model to fall back to ({self.model_info.path} only runs on the Edge "
                    "TPU; keep the uncompiled model beside it)"
                ) from None
            self.model_info = self._source_info or check_model_file(cpu)
            self._source_info = None
        log.warning("DELEGATE NOT USED, running on the CPU: %s", exc)
        self._interpreter = self._build_interpreter()

    def _build_interpreter(self) -> Any:
        kwargs: dict[str, Any] = {"model_path": str(self.model_info.path), "num_threads": self.num_threads}
        if self.delegate is not None:
            kwargs["experimental_delegates"] = [self.delegate.handle]
        try:
            # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to fd 2: held back, as the
            # command line does; any other native line is printed as it came (edgecls.nativelog)
            with warnings.catch_warnings(), quiet_native_stderr():
                # tf.lite.Interpreter warns that it is deprecated; edgecls uses it only as the last fallback.
                warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
                interpreter = self.backend.interpreter_class(**kwargs)
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if self.delegate is not None:
                raise delegates.interpreter_error(self.delegate, self.model_info, _one_line(exc)) from None
            raise ModelError(
                f"{self.model_info.path}: the {self.backend.name} interpreter cannot load this model ({_one_line(exc)}); "
                "the file may be truncated or need ops this runtime lacks"
            ) from None
        return interpreter

    def _input_details(self) -> tuple[InputSpec, int]:
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        problem = classifier_problem(
            [list(map(int, d["shape"])) for d in inputs],
            [list(map(int, d["shape"])) for d in outputs],
            _op_names(self.model_info),
        )
        if problem:
            raise NotAClassifierError(self.model_info.path, problem)
        d = inputs[0]
        shape = [int(x) for x in d["shape"]]
        if len(shape) == 3:
            shape = [*shape, 1]
        scale, zero_point = _quantization(d, self.model_info.path, "input")
        dtype = np.dtype(d["dtype"]).name
        try:
            spec = InputSpec(shape[1], shape[2], shape[3], dtype, scale, zero_point)
        except ConfigError as exc:
            raise ModelError(f"{self.model_info.path}: {exc}") from None
        return spec, int(d["index"])

    def _output_details(self) -> tuple[OutputSpec, int]:
        d = self._interpreter.get_output_details()[0]
        scale, zero_point = _quantization(d, self.model_info.path, "output")
        size = int(np.prod(d["shape"]))
        return OutputSpec(size, np.dtype(d["dtype"]).name, scale, zero_point), int(d["index"])

    # -- inference ------------------------------------------------------------------------------------------------

    def classify(
        self,
        image: np.ndarray | str | os.PathLike[str],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        color: str = "rgb",
    ) -> list[Prediction]:
        """Classify one image: a uint8 array (HxW, HxWx3, HxWx4 in ``color`` order, "rgb" or "bgr") or a file path.

        Returns up to ``top_k`` predictions with score >= ``threshold``, best first (None: the configuration's,
        5 and 0.0 unless it was opened with others).
        """
        return self._ranked(*self._run(image, color), top_k, threshold)

    def scores(self, image: np.ndarray | str | os.PathLike[str], *, color: str = "rgb") -> np.ndarray:
        """All class scores in [0, 1] for one image (two for a single sigmoid unit: negative, positive)."""
        t0, t1, t2 = self._run(image, color)
        scores = self.postprocessor.scores(self._output_view())
        t3 = time.perf_counter()
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return scores

    def classify_input(
        self, tensor: np.ndarray, *, top_k: int | None = None, threshold: float | None = None
    ) -> list[Prediction]:
        """Classify an input already preprocessed (``self.preprocessor.to_array(frame)``): copy, invoke, rank."""
        t0 = time.perf_counter()
        np.copyto(self._input_view()[0], tensor, casting="no")
        t1 = time.perf_counter()
        self.invoke()
        return self._ranked(t0, t1, time.perf_counter(), top_k, threshold)

    def _ranked(self, t0: float, t1: float, t2: float, top_k: int | None, threshold: float | None) -> list[Prediction]:
        """Rank the output of the invoke that ran from ``t1`` to ``t2`` and record the timing (input from ``t0``)."""
        top_k = self.config.top_k if top_k is None else top_k
        threshold = self.config.threshold if threshold is None else threshold
        pairs = self.postprocessor.top_k(self._output_view(), top_k, threshold)
        result = predictions(pairs, self.labels.names if self.labels else None)
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3)
        return result

    def output_scores(self) -> np.ndarray:
        """All class scores in [0, 1] of the last classification (read from the output tensor)."""
        return self.postprocessor.scores(self._output_view())

    def _run(self, image: np.ndarray | str | os.PathLike[str], color: str) -> tuple[float, float, float]:
        """Preprocess into the input tensor and invoke; returns the perf_counter marks around each step."""
        if not isinstance(image, np.ndarray):
            image = read_image(image, grayscale=self.input_spec.channels == 1)
            color = "rgb"
        t0 = time.perf_counter()
        self.preprocessor(image, self._input_view()[0], color=color)
        t1 = time.perf_counter()
        self.invoke()
        return t0, t1, time.perf_counter()

    def invoke(self) -> None:
        """Run the interpreter on the current input tensor; failures become ModelError."""
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{self.path}: inference failed ({_one_line(exc)})") from None

    # -- description and lifetime ---------------------------------------------------------------------------------

    @property
    def interpreter(self) -> Any:
        """The underlying interpreter, for advanced use (bench, custom tensors)."""
        return self._interpreter

    def describe(self) -> dict[str, Any]:
        """Everything `edgecls info` shows, as plain data."""
        inp, out = self.input_spec, self.output_spec
        return {
            "path": str(self.path),
            "size_bytes": self.model_info.size_bytes,
            "backend": {"name": self.backend.name, "version": self.backend.version, "num_threads": self.num_threads},
            "delegate": self.delegate.describe() if self.delegate else None,
            "fallback_reason": self.fallback_reason,
            "input": {
                "shape": [1, inp.height, inp.width, inp.channels],
                "dtype": inp.dtype,
                "color": inp.color,
                "quantization": {"scale": inp.scale, "zero_point": inp.zero_point} if inp.quantized else None,
            },
            "output": {
                "size": out.size,
                "num_classes": out.num_classes,
                "dtype": out.dtype,
                "quantization": {"scale": out.scale, "zero_point": out.zero_point} if out.scale > 0 else None,
                "activation": self.postprocessor.activation,
            },
            "labels": {"count": len(self.labels), "source": self.labels.source, "first": list(self.labels.names[:5])}
            if self.labels
            else None,
            "preprocess": {**self.preprocessor.config.to_dict(), "engine": self.preprocessor.engine},
            "ops": op_counts(self.backend, str(self.path)),
            "metadata_files": sorted(self.model_info.associated_files),
            "manifest": self.model_info.manifest,
        }

    def close(self) -> None:
        """Release the interpreter (and its delegate)."""
        self._input_view = self._output_view = None  # type: ignore[assignment]
        self._interpreter = None

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SEQUENCE_OPS = {
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "BIDIRECTIONAL_SEQUENCE_LSTM",
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "BIDIRECTIONAL_SEQUENCE_RNN",
    "LSTM",
    "RNN",
    "SVDF",
}


def classifier_problem(
    inputs: list[list[int]], outputs: list[list[int]], ops: set[str] | frozenset[str] = frozenset()
) -> str | None:
    """Why tensors of these shapes are not an image classifier (one image input [1, H, W, C] with C 1 or 3, and one
    output that is a class-score vector), saying what the model looks like instead; None when they are one."""
    if len(inputs) != 1:
        return f"it has {len(inputs)} inputs {inputs} (a classifier has one image input)"
    shape = inputs[0]
    seq = sorted(ops & (SEQUENCE_OPS | ({"WHILE"} if len(shape) == 3 else set())))  # Keras 3 unrolls LSTMs to WHILE
    if seq:
        return f"it holds {', '.join(seq)}: a sequence model (input {shape}), not an image classifier"
    image = shape + [1] if len(shape) == 3 else shape
    if len(image) != 4 or image[0] != 1 or image[3] not in (1, 3) or min(image[1:3]) < 2:
        return f"its input {shape} is not an image; expected [1, height, width, 3 or 1]"
    if len(outputs) != 1:
        hint = " (an object detector such as SSD has 4)" if len(outputs) in (3, 4) else ""
        return f"it has {len(outputs)} outputs {outputs}{hint}; a classifier has one class-score vector"
    out = outputs[0]
    wide = [n for n in out[1:] if n != 1] if out and out[0] == 1 else [n for n in out if n != 1]
    if not out or min(out) < 1:
        return f"its output {out} is empty"
    if len(wide) > 1:
        if len(out) >= 3 and out[-1] in (2, 3) and len(wide) == 2:
            kind = "keypoints (a pose model such as MoveNet?)"
        elif len(out) >= 3 and min(out[1:3]) >= 4:
            kind = "a map per pixel (a segmentation model such as DeepLab?)"
        else:
            kind = "more than one score vector"
        return f"its output {out} is {kind}, not a class-score vector"
    return None


def _op_names(info: ModelFileInfo) -> set[str]:
    from edgecls.model.tflite_schema import builtin_name

    codes = info.structure.operator_codes if info.structure else ()
    return {code.custom_code or builtin_name(code.builtin_code) for code in codes}


def _quantization(detail: dict[str, Any], path: Any, which: str) -> tuple[float, int]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not np.isfinite(scale) or scale < 0:
        raise ModelError(f"{path}: the {which} tensor's quantisation scale is {scale}; the model is damaged")
    return float(scale), int(zero_point)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__
