"""The Raspberry Pi AI Camera (Sony IMX500): the network runs on the camera's own chip, and each frame comes with
its outputs.

    edgecls run RUN --source imx500                     # RUN/imx500/network.rpk, RUN/imx500/labels.txt
    edgecls run RUN --source imx500:/path/network.rpk   # a network named outright

`find_network` finds what runs on the sensor: the ``.rpk`` that Raspberry Pi's ``imx500-package`` makes on the Pi
from the run's ``imx500/packerOut.zip``, its labels, and how the model was trained to see (the resize mode in the
run's manifest, which picks the sensor's crop). `SensorClassifier` stands where `edgecls.Classifier` stands for a
TFLite model: it ranks the scores each frame brings and times the on-sensor DNN and DSP from the frame's KPI, so
smoothing, sinks, the dashboard, collect and Home Assistant work as with any source. `IMX500Source` is the camera:
``picamera2.devices.IMX500`` first (it hands the network firmware to the sensor), then ``Picamera2`` on its camera.
A frame that comes before the network has run carries no outputs: it is skipped, never classified as zeros.

Nothing here imports picamera2 until a camera is opened; without it, opening is one CameraError with the fix.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import CameraError, ConfigError, LabelsError, ModelError, NotAClassifierError
from edgecls.live.sources import NOT_READY, PICAMERA_FORMATS, FrameSource
from edgecls.model.labels import Labels, read_labels_file
from edgecls.model.postprocess import ACTIVATIONS, OutputSpec, Postprocessor, Prediction, predictions
from edgecls.model.postprocess import top_k as rank
from edgecls.model.preprocess import RESIZE_MODES

log = logging.getLogger(__name__)

SOURCE = "imx500"
FOLDER = "imx500"  # in a run and in a deploy bundle: the IMX500 package and its labels
PACKAGE = "packerOut.zip"  # what the IMX500 converter (imxconv-tf) writes on the host
RPK = "network.rpk"  # what imx500-package makes of it on the Pi
LABELS = "labels.txt"
SENSOR_SIZE = (4056, 3040)  # the IMX500's full pixel array: every inference ROI is cut from it
CROPS = ("full", "center")  # the whole sensor scaled to the input, or its centre at the input's aspect ratio
FIRMWARE_STAGE = 2  # picamera2's FW_NETWORK_STAGE: the upload of the network itself
IMX500_HINT = (
    "the AI Camera needs picamera2 and the IMX500 packages from Raspberry Pi OS: sudo apt install python3-picamera2 "
    "imx500-all imx500-tools (then reboot), and a venv with system site packages (python3 -m venv "
    "--system-site-packages .venv)"
)


def is_imx500_source(spec: object) -> bool:
    """Whether a ``--source`` text names the AI Camera (``imx500`` or ``imx500:PATH.rpk``)."""
    return isinstance(spec, str) and (spec.strip() == SOURCE or spec.strip().startswith(SOURCE + ":"))


def rpk_of_source(spec: str) -> Path | None:
    """The network a ``imx500:PATH`` source names (None for a bare ``imx500``)."""
    text = spec.strip()[len(SOURCE) + 1 :]
    return Path(text) if text else None


def crop_for(resize: str | None, preserve_aspect_ratio: bool | None = None) -> str:
    """The sensor crop that shows the network what training showed the model: ``squash`` (the whole picture
    stretched to the input) is the whole sensor; ``center-crop`` is the centre at the input's aspect ratio; so is
    ``letterbox``, which the sensor cannot do (it has no padding): the centre keeps the shapes undistorted, as the
    letterboxed training images were, at the cost of the edges. Without a manifest, the network's own intrinsics
    decide (``preserve_aspect_ratio``), else the whole sensor (edgecls's default resize is squash)."""
    if resize is None:
        return "center" if preserve_aspect_ratio else "full"
    if resize not in RESIZE_MODES:
        raise ConfigError(
            f"resize mode {resize!r} is not one the sensor can follow; expected one of {', '.join(RESIZE_MODES)}"
        )
    return "full" if resize == "squash" else "center"


def roi_for(crop: str, input_size: tuple[int, int], sensor: tuple[int, int] = SENSOR_SIZE) -> tuple[int, int, int, int]:
    """The (x, y, width, height) of the sensor that the ISP scales to the network's ``input_size`` (width, height).

    >>> roi_for("center", (224, 224))
    (508, 0, 3040, 3040)
    >>> roi_for("full", (224, 224))
    (0, 0, 4056, 3040)
    """
    sw, sh = sensor
    if crop == "full":
        return (0, 0, sw, sh)
    w, h = input_size
    if sw * h > sh * w:  # the sensor is wider than the input: full height
        rw, rh = sh * w // h, sh
    else:
        rw, rh = sw, sw * h // w
    return ((sw - rw) // 2, (sh - rh) // 2, rw, rh)


# -- what runs on the sensor ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorNetwork:
    """A network for the sensor: the ``rpk`` file, its label list (None when none was found), the training resize
    mode and output activation from the run's manifest (None when there is no manifest), and where each came from."""

    rpk: Path
    labels: tuple[str, ...] | None = None
    labels_source: str | None = None
    resize: str | None = None
    activation: str | None = None
    manifest_source: Path | None = None


def find_network(
    model: str | os.PathLike[str],
    *,
    source: str = SOURCE,
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
) -> SensorNetwork:
    """Find the network for ``edgecls run MODEL --source imx500[:RPK]``.

    ``model`` is a run folder (its ``imx500/network.rpk``), a deploy prefix (the same layout), a ``model.tflite``
    (the folder it is in), or the ``.rpk`` itself; ``imx500:PATH`` names the ``.rpk`` outright. The labels are
    ``labels`` when given, else ``labels.txt`` beside the ``.rpk``, else the run's ``imx500/labels.txt``, else the
    manifest's. The manifest is read from ``model.tflite`` (the given one, or the run's) without running it.
    """
    given = rpk_of_source(source) if is_imx500_source(source) else None
    path = Path(model)
    folder = path if path.is_dir() else path.parent
    if given is not None:
        rpk = given
    elif path.suffix.lower() == ".rpk":
        rpk = path
    else:
        rpk = _find_rpk(path, folder)
    _check_rpk(rpk)
    run = rpk.parent.parent if rpk.parent.name == FOLDER else rpk.parent
    manifest_file = next(
        (
            m
            for m in (path if path.suffix.lower() == ".tflite" else None, folder / "model.tflite", run / "model.tflite")
            if m is not None and m.is_file()
        ),
        None,
    )
    manifest: dict[str, Any] = {}
    if manifest_file is not None:
        from edgecls.model.metadata import check_model_file

        manifest = check_model_file(manifest_file).manifest or {}
    names, origin = _network_labels(
        labels, [rpk.with_name(LABELS), folder / FOLDER / LABELS, run / FOLDER / LABELS], manifest
    )
    resize = manifest.get("preprocess", {}).get("resize")
    activation = manifest.get("output", {}).get("activation")
    if activation is not None and activation not in ACTIVATIONS:
        raise ModelError(
            f"{manifest_file}: the manifest's output activation {activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )
    crop_for(resize)  # an unknown resize mode is an error now, not at the first frame
    return SensorNetwork(rpk, names, origin, resize, activation, manifest_file if manifest else None)


def _find_rpk(path: Path, folder: Path) -> Path:
    candidates = [folder / FOLDER / RPK, folder / RPK]
    found = next((c for c in candidates if os.path.lexists(c)), None)  # a broken link: _check_rpk says so
    if found is not None:
        return found
    package = folder / FOLDER / PACKAGE
    made_from = (
        f"{package} is there: make the .rpk from it on the Raspberry Pi"
        if package.is_file()
        else f"the run's {FOLDER}/{PACKAGE} comes from edgecls convert --target imx500; the .rpk is made from it on "
        "the Raspberry Pi"
    )
    raise ModelError(
        f"no IMX500 network for {path}: looked for {' and '.join(str(c) for c in candidates)}. {made_from} with "
        f"sudo apt install imx500-tools && imx500-package -i {package} -o {folder / FOLDER} (edgecls deploy --profile "
        f"rpi5-ai-camera does this on the device), or name one: --source imx500:PATH.rpk"
    )


def _check_rpk(rpk: Path) -> None:
    import stat

    try:
        st = rpk.stat()
    except FileNotFoundError:
        raise ModelError(
            f"IMX500 network not found: {rpk} (a .rpk made by imx500-package on the Raspberry Pi)"
        ) from None
    except OSError as exc:
        from edgecls.fsutil import os_reason

        raise ModelError(f"cannot read the IMX500 network {rpk} ({os_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"the IMX500 network {rpk} is not a regular file; expected a .rpk made by imx500-package")
    if st.st_size == 0:
        raise ModelError(f"the IMX500 network {rpk} is empty; make it again with imx500-package")


def _network_labels(
    labels: str | os.PathLike[str] | Sequence[str] | None, candidates: list[Path], manifest: dict[str, Any]
) -> tuple[tuple[str, ...] | None, str | None]:
    if labels is not None and not isinstance(labels, (str, os.PathLike)):
        return tuple(labels), "labels argument"
    files = [Path(labels)] if labels is not None else [c for c in candidates if c.is_file()]
    if files:
        raw = read_labels_file(files[0])
        if isinstance(raw, dict):  # 'id label' lines
            raw = [raw.get(i, str(i)) for i in range(max(raw) + 1)]
        return tuple(raw), str(files[0])
    if manifest.get("labels"):
        return tuple(str(n) for n in manifest["labels"]), "edgecls manifest"
    return None, None


# -- the classifier side --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorOutputs:
    """What the sensor computed for one frame: its output ``tensors`` (dequantised, float32), and from the frame's
    KPI the time of the network (``dnn_ms``) and of the sensor's DSP (``dsp_ms``) on the chip (0 when absent)."""

    tensors: tuple[np.ndarray, ...]
    dnn_ms: float = 0.0
    dsp_ms: float = 0.0


class SensorClassifier:
    """The classifier of a network that runs on the IMX500: ranks the scores that come with each frame.

    It takes the place of `edgecls.Classifier` in `edgecls.Stream` (``Stream(SensorClassifier.open("run"),
    source="imx500")``, or simply ``Stream("run", source="imx500")``) and makes the `IMX500Source` that feeds it.
    ``last_timing`` holds the on-sensor DSP time as ``preprocess_ms``, the on-sensor DNN time as ``invoke_ms`` and
    the ranking on the CPU as ``postprocess_ms``.
    """

    num_threads = 0  # no interpreter on the CPU

    def __init__(self, network: SensorNetwork) -> None:
        self.network = network
        self.path = network.rpk
        self.labels: Labels | None = (
            Labels(network.labels, network.labels_source or "labels") if network.labels is not None else None
        )
        self.activation = network.activation or "auto"
        # without a manifest the network's own intrinsics decide, when the camera has loaded it
        self.crop: str | None = crop_for(network.resize) if network.resize else None
        self.last_timing: Any = None
        self._post: Postprocessor | None = None
        self._scores: np.ndarray | None = None
        log.info(
            "%s: on the IMX500, labels from %s, trained with resize %s: sensor crop %s",
            self.path,
            self.labels.source if self.labels else "nowhere (class indices are shown)",
            network.resize or "unknown (no manifest)",
            self.crop or "from the network's intrinsics",
        )

    @classmethod
    def open(
        cls,
        model: str | os.PathLike[str],
        *,
        source: str = SOURCE,
        labels: str | os.PathLike[str] | Sequence[str] | None = None,
    ) -> SensorClassifier:
        """The classifier of the network `find_network` finds for ``model`` and ``source``."""
        return cls(find_network(model, source=source, labels=labels))

    def make_source(
        self,
        spec: str = SOURCE,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        picamera: dict[str, Any] | None = None,
        **_: Any,
    ) -> IMX500Source:
        """The camera that runs this network (``spec`` is the ``--source`` text; the other arguments are
        `edgecls.live.sources.parse_source`'s: ``width``/``height`` size the main stream, ``picamera`` holds a profile's
        ``main_size``, ``main_format``, ``buffer_count`` and ``controls``)."""
        if not is_imx500_source(spec):
            raise ConfigError(
                f"the IMX500 network {self.path} runs on the AI Camera's sensor; its source is imx500 "
                f"(received --source {spec!r})"
            )
        named = rpk_of_source(spec)
        if named is not None and named.resolve() != self.path.resolve():
            raise ConfigError(f"--source {spec} names another network than {self.path}; give one of them")
        options = dict(picamera or {})
        if width and height:
            options["main_size"] = (width, height)
        return IMX500Source(self.path, crop=self.crop, fps=fps, on_network=self._adopt, **options)

    def _adopt(self, intrinsics: Any) -> None:
        """What the network's own intrinsics add where the run said nothing: labels, and whether its outputs
        still need a softmax."""
        names = getattr(intrinsics, "labels", None)
        if self.crop is None:
            self.crop = crop_for(None, getattr(intrinsics, "preserve_aspect_ratio", None))
        if self.labels is None and names:
            self.labels = Labels(tuple(names), f"{self.path} (network intrinsics)")
        if self.network.activation is None and getattr(intrinsics, "softmax", None):
            self.activation, self._post = "logits", None

    def classify_outputs(self, outputs: SensorOutputs, *, top_k: int = 5, threshold: float = 0.0) -> list[Prediction]:
        """The ``top_k`` classes of one frame's outputs with score >= ``threshold``, best first."""
        t0 = time.perf_counter()
        scores = self._scores_of(outputs)
        ranked = predictions(rank(scores, top_k, threshold), self.labels.names if self.labels else None)
        from edgecls.model.classifier import Timing

        self.last_timing = Timing(outputs.dsp_ms, outputs.dnn_ms, (time.perf_counter() - t0) * 1e3)
        return ranked

    def output_scores(self) -> np.ndarray:
        """All class scores in [0, 1] of the last frame."""
        if self._scores is None:
            raise ModelError(f"{self.path}: no frame has been classified yet")
        return self._scores

    def _scores_of(self, outputs: SensorOutputs) -> np.ndarray:
        if len(outputs.tensors) != 1:
            shapes = [list(t.shape) for t in outputs.tensors]
            raise NotAClassifierError(
                self.path,
                f"it has {len(outputs.tensors)} output tensors {shapes} (an object "
                "detector has several); a classifier has one class-score vector",
            )
        flat = np.asarray(outputs.tensors[0], dtype=np.float32).reshape(-1)
        if self._post is None or self._post.spec.size != flat.size:
            spec = OutputSpec(flat.size, "float32")  # one sigmoid unit scores two classes
            if self.labels is not None and len(self.labels) != spec.num_classes:
                raise LabelsError(
                    f"labels from {self.labels.source} have {len(self.labels)} entries but the IMX500 network "
                    f"{self.path} outputs {flat.size} scores; use the labels.txt made with this network (--labels)"
                )
            self._post = Postprocessor(spec, activation=self.activation)
        self._scores = self._post.scores(flat)
        return self._scores

    def classify(self, image: Any, **_: Any) -> list[Prediction]:
        raise ModelError(
            f"{self.path} runs on the AI Camera's sensor, which classifies its own frames: use "
            "--source imx500 (an image or another camera needs the model.tflite on the CPU)"
        )

    def describe(self) -> dict[str, Any]:
        net = self.network
        return {
            "path": str(self.path),
            "accelerator": "imx500",
            "crop": self.crop,
            "resize": net.resize,
            "activation": self.activation,
            "manifest": str(net.manifest_source) if net.manifest_source else None,
            "labels": {"count": len(self.labels), "source": self.labels.source} if self.labels else None,
        }

    def close(self) -> None:
        """Nothing to release: the network lives on the sensor (the camera is the source's)."""

    def __enter__(self) -> SensorClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the camera -----------------------------------------------------------------------------------------------------


class IMX500Source(FrameSource):
    """The AI Camera through picamera2: the network ``rpk`` on the sensor, ``main`` frames for the sinks.

    ``picamera2.devices.IMX500(rpk)`` is made first (it hands the network firmware to the sensor), then
    ``Picamera2(imx500.camera_num)``. ``crop`` ("full" or "center", see `crop_for`; None: as the network's
    intrinsics say) sets the region of the sensor the ISP scales to the network's input. ``main_size``/``main_format``: the frames the results carry (for
    --collect, video and the dashboard), best at the sensor's 4:3 so that they show what the crop was cut from.
    ``fps``: the frame rate (default: the network's inference rate). Each frame's outputs and KPI are taken with
    it from the same request. Until the network's first outputs (the firmware upload takes a while the first
    time), frames are skipped and the upload's progress is reported (``report``); no outputs within
    ``first_output_timeout`` s, or later for ``output_timeout`` s, is a CameraError (the stream then reopens the
    camera). ``on_network(intrinsics)`` is called once the network is loaded.
    """

    live = True
    computes_outputs = True

    def __init__(
        self,
        rpk: str | os.PathLike[str],
        *,
        crop: str | None = None,
        fps: float | None = None,
        main_size: tuple[int, int] = (640, 480),
        main_format: str = "RGB888",
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        first_output_timeout: float = 180.0,
        output_timeout: float = 10.0,
        frame_timeout: float | None = None,
        on_network: Callable[[Any], None] | None = None,
    ) -> None:
        if crop is not None and crop not in CROPS:
            raise ConfigError(f"IMX500 crop {crop!r} is not supported; expected one of {', '.join(CROPS)}")
        if main_format not in PICAMERA_FORMATS or main_format == "YUV420":
            raise ConfigError(
                f"the AI Camera's main format must be one of RGB888, BGR888, XRGB8888, XBGR8888 "
                f"(received {main_format!r})"
            )
        if buffer_count < 2:
            raise ConfigError(f"buffer_count must be at least 2 (received {buffer_count})")
        self.rpk, self.fps = Path(rpk), fps
        self.crop, self._crop_asked = crop, crop
        self.main_size, self.main_format, self.buffer_count = tuple(main_size), main_format, buffer_count
        self.controls = dict(controls or {})
        self.first_output_timeout, self.output_timeout = first_output_timeout, output_timeout
        self.frame_timeout = frame_timeout if frame_timeout is not None else max(0.5, 5.0 / (fps or 30.0))
        self.color = PICAMERA_FORMATS[main_format]
        self.name = f"imx500:{self.rpk}"
        self.on_network = on_network
        self.frames_not_ready = 0  # frames skipped since open because the network had not run yet
        self.roi: tuple[int, int, int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._imx500: Any = None
        self._camera: Any = None
        self._outputs: Any = None
        self._opened_at = self._last_output_at = 0.0
        self._seen_frame = self._ready = False
        self._progress: _FirmwareProgress | None = None

    # -- opening and closing ------------------------------------------------------------------------------------

    def open(self) -> None:
        imx500_class, camera_class = _import_picamera2()
        if not self.rpk.is_file():
            raise CameraError(f"IMX500 network not found: {self.rpk}")
        with _stdout_to_log():  # picamera2 prints (to stdout, where --json results go) what it cannot do
            try:
                imx500 = imx500_class(str(self.rpk))
            except Exception as exc:  # RuntimeError: no such camera, a bad .rpk, the firmware refused
                raise CameraError(_load_failure(self.rpk, exc)) from None
        try:
            self._check_task(imx500)
            camera = camera_class(imx500.camera_num)
        except Exception as exc:
            _release(imx500)
            if isinstance(exc, (ModelError, ConfigError)):
                raise
            raise CameraError(
                f"cannot open the AI Camera (camera {getattr(imx500, 'camera_num', '?')}) "
                f"({type(exc).__name__}: {exc}); is another program using it?"
            ) from None
        self._imx500, self._camera = imx500, camera
        self.frames_not_ready, self._opened_at = 0, time.monotonic()
        self._seen_frame = self._ready = False
        try:
            self._start(imx500, camera)
        except Exception as exc:
            self.close()
            if isinstance(exc, (CameraError, ConfigError)):
                raise
            raise CameraError(f"cannot start the AI Camera ({type(exc).__name__}: {exc})") from None

    def _check_task(self, imx500: Any) -> None:
        intrinsics = imx500.network_intrinsics
        task = getattr(intrinsics, "task", None) if intrinsics is not None else None
        if task not in (None, "classification"):
            raise NotAClassifierError(
                self.rpk, f"its network intrinsics say the task is {task!r}; edgecls runs image classifiers"
            )
        if self._crop_asked is None:
            self.crop = crop_for(None, getattr(intrinsics, "preserve_aspect_ratio", None))
        if self.on_network is not None:
            self.on_network(intrinsics)

    def _start(self, imx500: Any, camera: Any) -> None:
        rate = self.fps or getattr(imx500.network_intrinsics, "inference_rate", None)
        controls = {**({"FrameRate": float(rate)} if rate else {}), **self.controls}
        config = camera.create_preview_configuration(
            main={"size": self.main_size, "format": self.main_format},
            controls=controls,
            buffer_count=self.buffer_count,
        )
        camera.configure(config)
        self._progress = _FirmwareProgress.start(imx500, self.name, self.report)
        camera.start()
        try:
            self.input_size = tuple(imx500.get_input_size())  # type: ignore[assignment]
        except (KeyError, TypeError):  # an .rpk without network_info.txt
            self.input_size = None
        with _stdout_to_log():
            if self.crop == "center":
                imx500.set_inference_aspect_ratio(self.input_size or (1, 1))
            else:
                imx500.set_inference_roi_abs(roi_for("full", (1, 1)))
        self.roi = roi_for(self.crop, self.input_size or (1, 1))
        log.info(
            "%s: %s crop of the sensor, ROI %s, for an input of %s",
            self.name,
            self.crop,
            self.roi,
            self.input_size or "unknown size",
        )

    def close(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()
        camera, self._camera = self._camera, None
        if camera is not None:
            with contextlib.suppress(Exception):  # a camera that is gone cannot be stopped; it is still closed
                camera.stop()
            with contextlib.suppress(Exception):
                camera.close()
        imx500, self._imx500 = self._imx500, None
        if imx500 is not None:
            _release(imx500)

    # -- frames ---------------------------------------------------------------------------------------------------

    def read(self) -> np.ndarray | None:
        """The next frame (the main stream); `frame_outputs` then says what the network made of it, or NOT_READY."""
        camera, imx500 = self._camera, self._imx500
        if camera is None or imx500 is None:
            raise CameraError(f"{self.name} is not open")
        # the first frame may take a while (the camera starts); later ones come a frame time apart
        timeout = self.frame_timeout if self._seen_frame else max(10.0, 4 * self.frame_timeout)
        request = self._capture(camera, timeout)
        self._seen_frame = True
        try:
            metadata = request.get_metadata()
            tensors = imx500.get_outputs(metadata)
            image = request.make_array("main")
            kpi = imx500.get_kpi_info(metadata) if tensors is not None else None
        finally:
            request.release()
        if tensors is None:
            self._not_ready()
            return image
        dnn_ms, dsp_ms = kpi if kpi is not None else (0.0, 0.0)
        self._outputs = SensorOutputs(
            tuple(np.asarray(t, dtype=np.float32) for t in tensors), float(dnn_ms), float(dsp_ms)
        )
        self._last_output_at = time.monotonic()
        if not self._ready:
            self._network_running()
        return image

    def frame_outputs(self) -> Any:
        return self._outputs

    def _capture(self, camera: Any, timeout: float) -> Any:
        try:
            return camera.capture_request(wait=timeout)
        except Exception as exc:  # TimeoutError when frames stop; RuntimeError when libcamera loses the camera
            import concurrent.futures

            if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)):
                with contextlib.suppress(Exception):
                    getattr(camera, "cancel_all_and_flush", lambda: None)()
                raise CameraError(
                    f"{self.name} delivered no frame for {timeout:.1f} s (a loose ribbon cable?); reopening it"
                ) from None
            raise CameraError(f"{self.name} stopped delivering frames ({type(exc).__name__}: {exc})") from None

    def _not_ready(self) -> None:
        self._outputs = NOT_READY
        self.frames_not_ready += 1
        now = time.monotonic()
        if not self._ready and now - self._opened_at > self.first_output_timeout:
            raise CameraError(
                f"the AI Camera sent {self.frames_not_ready} frames in {now - self._opened_at:.0f} s without the "
                f"network's outputs: {self.rpk.name} did not start on the sensor (is it an IMX500 network made by "
                "imx500-package? is the firmware installed: sudo apt install imx500-all?); reopening it"
            )
        if self._ready and now - self._last_output_at > self.output_timeout:
            raise CameraError(
                f"the AI Camera's network sent no outputs for {now - self._last_output_at:.1f} s; reopening it"
            )

    def _network_running(self) -> None:
        self._ready = True
        if self._progress is not None:
            self._progress.stop()
        took = time.monotonic() - self._opened_at
        message = (
            f"the network runs on the sensor: first outputs after {took:.1f} s "
            f"({self.frames_not_ready} frame(s) without them skipped)"
        )
        log.info("%s: %s", self.name, message)
        if self.report is not None and (self.frames_not_ready or took > 2.0):
            self.report("source-progress", f"{self.name}: {message}")

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts.update(
            rpk=str(self.rpk),
            crop=self.crop,
            roi=self.roi,
            input_size=self.input_size,
            main_size=list(self.main_size),
            frames_not_ready=self.frames_not_ready,
        )
        return facts


class _FirmwareProgress:
    """Reports the network firmware's upload to the sensor, read from picamera2's `get_fw_upload_progress` in a
    thread (picamera2's own bar is a tqdm in another process, on a terminal that a service does not have)."""

    def __init__(self, imx500: Any, name: str, report: Callable[[str, str], None]) -> None:
        self.imx500, self.name, self.report = imx500, name, report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgecls-imx500-firmware", daemon=True)

    @classmethod
    def start(cls, imx500: Any, name: str, report: Callable[[str, str], None] | None) -> _FirmwareProgress | None:
        if report is None:
            return None
        kind = getattr(imx500, "fw_progress", None)
        if kind is None or int(kind) == 0:  # FwProgressType.NONE: the debugfs files need root
            report(
                "source-progress",
                f"{name}: uploading the network to the sensor (its progress needs root to "
                "read); the first results can take a minute",
            )
            return None
        progress = cls(imx500, name, report)
        progress._thread.start()
        return progress

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def _run(self) -> None:
        shown = -1
        while not self._stop.is_set():
            try:
                current, total = self.imx500.get_fw_upload_progress(FIRMWARE_STAGE)
            except Exception as exc:  # the debugfs file went away: the upload is over or cannot be followed
                log.debug("imx500 firmware progress: %s", exc)
                return
            if total:
                step = min(100, int(100 * current / total)) // 25 * 25
                if step > shown:
                    shown = step
                    self.report(
                        "source-progress",
                        f"{self.name}: uploading the network to the sensor: {step}% "
                        f"({current // 1024} of {total // 1024} KiB)",
                    )
                if current >= 0.95 * total:
                    return
            self._stop.wait(0.5)


# -- picamera2 ------------------------------------------------------------------------------------------------------


def _import_picamera2() -> tuple[Any, Any]:
    """(picamera2.devices.IMX500, picamera2.Picamera2), or a CameraError that says how to install them."""
    try:
        from picamera2 import Picamera2
        from picamera2.devices import IMX500
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        if missing == "picamera2" or missing.startswith("picamera2"):
            raise CameraError(f"--source imx500 needs picamera2, which is not installed here; {IMX500_HINT}") from None
        raise CameraError(f"picamera2's IMX500 support cannot be imported ({exc}); {IMX500_HINT}") from None
    except Exception as exc:  # numpy ABI mismatch, libcamera failing to load
        raise CameraError(
            f"picamera2 is installed but fails to import ({type(exc).__name__}: {exc}); {IMX500_HINT}"
        ) from None
    return IMX500, Picamera2


def _load_failure(rpk: Path, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "dev-node not found" in str(exc):
        return (
            "no AI Camera (IMX500) found: check the ribbon cable, 'rpicam-hello --list-cameras', that "
            "camera_auto_detect=1 is in /boot/firmware/config.txt and that imx500-all is installed (then reboot)"
        )
    return f"the AI Camera cannot load {rpk} ({text}); make it again with imx500-package from this run's {PACKAGE}"


def _release(imx500: Any) -> None:
    """Close the IMX500's device node now (picamera2 closes it only when the object is collected), so that the
    next open finds the sensor free."""
    fd = getattr(imx500, "device_fd", None)
    if fd is not None:
        with contextlib.suppress(Exception):
            fd.close()


class _LogLines(io.TextIOBase):
    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                log.info("picamera2: %s", line.strip())
        return len(text)


@contextlib.contextmanager
def _stdout_to_log() -> Iterator[None]:
    """What picamera2 prints in the block goes to the log: `edgecls run --json` writes results on stdout (through
    its own reference to it, which this leaves alone)."""
    lines = _LogLines()
    with contextlib.redirect_stdout(lines):
        yield
    lines.write("\n")


__all__ = [
    "CROPS",
    "FOLDER",
    "LABELS",
    "PACKAGE",
    "RPK",
    "IMX500Source",
    "SensorClassifier",
    "SensorNetwork",
    "SensorOutputs",
    "crop_for",
    "find_network",
    "is_imx500_source",
    "roi_for",
]
