"""Device preprocessing, defined once: crop/resize, colour order, normalisation and quantisation.

The runtime feeds camera frames and image files through this module, and the converter's int8 evaluation uses the
same code, so the accuracy measured on the host is the accuracy the device gets.

The hot path per frame is: resize (OpenCV when installed, Pillow otherwise, with the same pixel-centre convention),
one colour conversion on the small image, and one table lookup (normalisation + quantisation folded into a 256-entry
table) written straight into the interpreter's input tensor. Everything that depends only on the frame's shape is
computed once and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, ImageError

RESIZE_MODES = ("squash", "center-crop", "letterbox")
INTERPOLATIONS = ("bilinear", "nearest", "area")
COLOR_ORDERS = ("rgb", "bgr")
ENGINES = ("auto", "opencv", "pillow")
_DTYPES = {"uint8": (0, 255), "int8": (-128, 127), "float32": None}


@dataclass(frozen=True)
class InputSpec:
    """What the model's input tensor wants: size, channels (3 = RGB, 1 = grayscale), dtype and quantisation."""

    height: int
    width: int
    channels: int
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"model input has {self.channels} channels; expected 3 (RGB) or 1 (grayscale)")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"model input dtype {self.dtype!r} is not supported; expected uint8, int8 or float32")
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"model input size {self.height}x{self.width} is not a static image size")

    @property
    def quantized(self) -> bool:
        return self.dtype != "float32" and self.scale > 0

    @property
    def color(self) -> str:
        return "rgb" if self.channels == 3 else "grayscale"


@dataclass(frozen=True)
class PreprocessConfig:
    """How frames become model input. ``mean``/``std`` map raw pixels p to the model's value (p - mean) / std.

    ``None`` means the model's default: the edgecls manifest's values when present; for quantised inputs, raw pixels
    as the quantisation expects them (uint8 fed as is, int8 shifted by 128); for float inputs, [-1, 1].
    """

    resize: str = "squash"
    interpolation: str = "bilinear"
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    pad_value: int = 0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(
                f"resize mode {self.resize!r} is not supported; expected one of {', '.join(RESIZE_MODES)}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r} is not supported; expected one of {', '.join(INTERPOLATIONS)}"
            )
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"give both mean and std or neither (received mean={self.mean}, std={self.std})")
        if self.std is not None and np.any(np.asarray(self.std, dtype=np.float64) == 0):
            raise ConfigError(f"std must not be zero (received std={self.std})")
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"pad_value must be a pixel value 0..255 (received {self.pad_value})")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Build from a manifest or profile section; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing key(s) {unknown}; valid keys are {sorted(known)}")
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def normalization(spec: InputSpec, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) in effect for ``spec``, per channel, following PreprocessConfig's defaults."""
    if config.mean is not None and config.std is not None:
        mean, std = config.mean, config.std
    elif spec.quantized:
        offset = 0 if spec.dtype == "uint8" else -128
        mean, std = spec.zero_point - offset, 1.0 / spec.scale
    else:
        mean, std = 127.5, 127.5
    mean_a = np.broadcast_to(np.asarray(mean, dtype=np.float64), (spec.channels,)).copy()
    std_a = np.broadcast_to(np.asarray(std, dtype=np.float64), (spec.channels,)).copy()
    return mean_a, std_a


def build_lut(spec: InputSpec, config: PreprocessConfig) -> np.ndarray:
    """The table that maps a raw pixel value (0..255) to the model's input value, shape (256, channels).

    >>> spec = InputSpec(224, 224, 3, "uint8", scale=1 / 128, zero_point=128)
    >>> build_lut(spec, PreprocessConfig())[:3, 0].tolist()
    [0, 1, 2]
    """
    mean, std = normalization(spec, config)
    pixels = np.arange(256, dtype=np.float64)[:, None]
    real = (pixels - mean) / std
    if spec.dtype == "float32":
        return real.astype(np.float32)
    lo, hi = _DTYPES[spec.dtype]
    q = np.clip(np.round(real / spec.scale + spec.zero_point), lo, hi)
    return q.astype(spec.dtype)


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Quantise real values with a tensor's own scale and zero point: q = round(v / scale) + zero_point, clipped."""
    lo, hi = _DTYPES[dtype]
    return np.clip(np.round(np.asarray(values, dtype=np.float64) / scale) + zero_point, lo, hi).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Real values of quantised ones: scale * (q - zero_point), as float32."""
    return (scale * (values.astype(np.int64) - zero_point)).astype(np.float32)


@dataclass(frozen=True)
class _Plan:
    """Everything about one frame shape that does not change from frame to frame."""

    size: tuple[int, int]  # resized (width, height)
    offset: tuple[int, int]  # where the resized image lands in the input (x, y); non-zero only for letterbox
    convert: str | None  # colour conversion after resizing (an OpenCV COLOR_* name), or None
    cv2_convert: int | None  # its OpenCV code when OpenCV is the engine
    cv2_interpolation: int | None
    direct: bool  # resize straight into the output (see Preprocessor._direct)
    crop_slices: tuple[slice, slice] | None  # the crop as slices, None when the whole frame is used


class Preprocessor:
    """Turns uint8 frames (HxW, HxWx3, HxWx4; RGB or BGR order) into model input, writing into a given array.

    >>> spec = InputSpec(4, 4, 3, "uint8", scale=1 / 128, zero_point=128)
    >>> Preprocessor(spec).to_array(np.zeros((8, 8, 3), np.uint8)).shape
    (4, 4, 3)
    """

    def __init__(self, spec: InputSpec, config: PreprocessConfig | None = None, *, engine: str = "auto") -> None:
        self.spec = spec
        self.config = config or PreprocessConfig()
        self.engine = _resolve_engine(engine)
        if self.engine == "pillow" and self.config.interpolation == "area":
            # Pillow's BOX filter is not OpenCV's pixel-area average; refuse rather than differ from the host.
            raise ConfigError("interpolation 'area' needs OpenCV: pip install 'edgecls[camera]', or use 'bilinear'")
        self.lut = build_lut(spec, self.config)
        self._lut_kind = _lut_kind(self.lut, spec.dtype)
        self._pad = self.lut[self.config.pad_value]
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._cv2: Any = _import_cv2() if self.engine == "opencv" else None
        self._out_shape = (spec.height, spec.width, spec.channels)

    def to_array(self, frame: np.ndarray, *, color: str = "rgb") -> np.ndarray:
        """Preprocess into a new array of the model's input shape (HxWxC) and dtype."""
        out = np.empty(self._out_shape, dtype=self.lut.dtype)
        self(frame, out, color=color)
        return out

    def __call__(self, frame: np.ndarray, out: np.ndarray, *, color: str = "rgb") -> None:
        """Preprocess ``frame`` into ``out`` (HxWxC, the model's dtype), e.g. a view of the input tensor.

        ``color``: the frame's channel order, "rgb" or "bgr", or "yuv420" for an I420 array of shape (H*3/2, W) as
        cameras deliver it (a grayscale model then reads the Y plane as it is).
        """
        if color == "yuv420":
            frame, color = self._from_yuv420(frame), "rgb"
        try:  # the hot path: a frame shape seen before (validated then) needs one dictionary lookup
            plan = self._plans[(frame.shape, frame.dtype, color)]
        except (KeyError, AttributeError, TypeError):
            _check_frame(frame)  # raises ImageError for anything that is not a usable image
            plan = self._plans[(frame.shape, frame.dtype, color)] = self._make_plan(frame, color)
        src = frame[plan.crop_slices] if plan.crop_slices else frame
        if plan.direct:
            self._direct(src, out, plan)
        elif self.config.resize == "letterbox":
            out[...] = self._pad
            ox, oy = plan.offset
            w, h = plan.size
            self._write(self._resize(src, plan), out[oy : oy + h, ox : ox + w], plan)
        else:
            self._write(self._resize(src, plan), out, plan)

    # -- pieces -------------------------------------------------------------------------------------------------

    def _from_yuv420(self, frame: np.ndarray) -> np.ndarray:
        if not (
            isinstance(frame, np.ndarray) and frame.ndim == 2 and frame.shape[0] % 3 == 0 and frame.dtype == np.uint8
        ):
            raise ImageError(
                f"a yuv420 frame is a uint8 array of shape (height * 3 / 2, width); received "
                f"{getattr(frame, 'shape', type(frame).__name__)}"
            )
        height = frame.shape[0] * 2 // 3
        if self.spec.channels == 1:
            return frame[:height]  # the Y plane is the grayscale image
        cv2 = self._cv2 or _import_cv2()
        return cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420)

    def _make_plan(self, frame: np.ndarray, color: str) -> _Plan:
        if color not in COLOR_ORDERS:
            raise ImageError(
                f"colour order {color!r} is not supported; expected 'rgb' or 'bgr' (OpenCV frames are bgr)"
            )
        h, w = frame.shape[:2]
        src_channels = 1 if frame.ndim == 2 else frame.shape[2]
        th, tw = self.spec.height, self.spec.width
        crop, size, offset = (0, h, 0, w), (tw, th), (0, 0)
        if self.config.resize == "center-crop":
            scale = min(h / th, w / tw)
            ch, cw = max(1, round(th * scale)), max(1, round(tw * scale))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            crop = (y0, y0 + ch, x0, x0 + cw)
        elif self.config.resize == "letterbox":
            scale = min(th / h, tw / w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            size, offset = (nw, nh), ((tw - nw) // 2, (th - nh) // 2)
        convert = _CONVERSIONS.get((src_channels, color, self.spec.channels))
        cv2 = self._cv2
        direct = (
            cv2 is not None
            and self.config.interpolation != "nearest"
            and self._lut_kind in ("identity", "xor128")
            and self.config.resize != "letterbox"
            and convert in (None, "COLOR_BGR2RGB")
            and (crop[1] - crop[0], crop[3] - crop[2]) != (th, tw)
        )
        return _Plan(
            size,
            offset,
            convert,
            getattr(cv2, convert) if cv2 is not None and convert else None,
            _CV2_INTERPOLATION[self.config.interpolation](cv2) if cv2 is not None else None,
            direct,
            None if crop == (0, h, 0, w) else (slice(crop[0], crop[1]), slice(crop[2], crop[3])),
        )

    def _direct(self, src: np.ndarray, out: np.ndarray, plan: _Plan) -> None:
        """Fast path (OpenCV, pixels fed as is or shifted by 128): resize straight into the input tensor."""
        cv2 = self._cv2
        target = out.view(np.uint8) if self._lut_kind == "xor128" else out
        if self.spec.channels == 1:
            target = target[:, :, 0]
        result = cv2.resize(src, plan.size, dst=target, interpolation=plan.cv2_interpolation)
        if result is not target:  # OpenCV allocated instead of writing in place (an unusual memory layout)
            np.copyto(target, result.reshape(target.shape))
        if plan.cv2_convert is not None:
            cv2.cvtColor(target, plan.cv2_convert, dst=target)
        if self._lut_kind == "xor128":
            np.bitwise_xor(target, np.uint8(128), out=target)

    def _resize(self, src: np.ndarray, plan: _Plan) -> np.ndarray:
        if src.ndim == 3 and src.shape[2] == 1:
            src = src[:, :, 0]
        if (src.shape[1], src.shape[0]) == plan.size:
            return src
        if self.config.interpolation == "nearest":
            # Our own gather (pixel centres, like Pillow): OpenCV's nearest modes differ between its versions.
            return src[_nearest_index(src.shape[0], plan.size[1])][:, _nearest_index(src.shape[1], plan.size[0])]
        if self._cv2 is not None:
            return self._cv2.resize(src, plan.size, interpolation=plan.cv2_interpolation)
        return _pillow_resize(src, plan.size)

    def _write(self, small: np.ndarray, out: np.ndarray, plan: _Plan) -> None:
        """Colour-convert ``small`` and map it through the table into ``out``."""
        converted = _convert_color(small, plan)
        if converted.ndim == 2:
            converted = converted[:, :, None]
        kind = self._lut_kind
        if kind == "identity":
            np.copyto(out, converted, casting="no")
        elif kind == "xor128":
            as_u8 = out.view(np.uint8)
            np.bitwise_xor(converted, np.uint8(128), out=as_u8)
        elif self._cv2 is not None and out.flags.c_contiguous:
            lut = self.lut[:, 0] if self.spec.channels == 1 else self.lut
            result = self._cv2.LUT(converted, np.ascontiguousarray(lut.reshape(256, 1, self.spec.channels)))
            np.copyto(out, result.reshape(out.shape))
        else:
            for c in range(self.spec.channels):
                np.take(self.lut[:, c], converted[:, :, c], out=out[:, :, c])


def _check_frame(frame: Any) -> None:
    if not isinstance(frame, np.ndarray):
        raise ImageError(f"expected a numpy uint8 image array, received {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ImageError(
            f"expected a uint8 image array, received dtype {frame.dtype}; scale to 0..255 and use .astype(np.uint8)"
        )
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))):
        raise ImageError(f"expected an image of shape HxW, HxWx3 or HxWx4, received shape {tuple(frame.shape)}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ImageError(f"received an empty image of shape {tuple(frame.shape)}")


# OpenCV colour conversion codes by (source channels, source order, model channels); looked up lazily.
_CONVERSIONS = {
    (3, "bgr", 3): "COLOR_BGR2RGB",
    (4, "rgb", 3): "COLOR_RGBA2RGB",
    (4, "bgr", 3): "COLOR_BGRA2RGB",
    (1, "rgb", 3): "COLOR_GRAY2RGB",
    (1, "bgr", 3): "COLOR_GRAY2RGB",
    (3, "rgb", 1): "COLOR_RGB2GRAY",
    (3, "bgr", 1): "COLOR_BGR2GRAY",
    (4, "rgb", 1): "COLOR_RGBA2GRAY",
    (4, "bgr", 1): "COLOR_BGRA2GRAY",
}
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _convert_color(img: np.ndarray, plan: _Plan) -> np.ndarray:
    name = plan.convert
    if name is None:
        return img
    if plan.cv2_convert is not None:
        import cv2

        return cv2.cvtColor(img, plan.cv2_convert)
    if name == "COLOR_GRAY2RGB":
        return np.repeat(img[:, :, None] if img.ndim == 2 else img, 3, axis=2)
    rgb = img[:, :, :3]
    if name.startswith("COLOR_BGR"):
        rgb = rgb[:, :, ::-1]
    if name.endswith("GRAY"):
        return np.clip(np.rint(rgb.astype(np.float32) @ _GRAY_WEIGHTS), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _lut_kind(lut: np.ndarray, dtype: str) -> str:
    ramp = np.arange(256)
    if dtype == "uint8" and all(np.array_equal(lut[:, c], ramp) for c in range(lut.shape[1])):
        return "identity"
    if dtype == "int8" and all(np.array_equal(lut[:, c].astype(np.int64), ramp - 128) for c in range(lut.shape[1])):
        return "xor128"
    return "table"


_CV2_INTERPOLATION: dict[str, Callable[[Any], int]] = {
    "bilinear": lambda cv2: cv2.INTER_LINEAR,
    "nearest": lambda cv2: cv2.INTER_NEAREST_EXACT,  # not used for resizing: see Preprocessor._resize
    "area": lambda cv2: cv2.INTER_AREA,
}


@functools.lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing, sampling at pixel centres."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def _pillow_resize(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with Pillow on OpenCV's pixel-centre convention (no antialiasing, like INTER_LINEAR)."""
    from PIL import Image

    channels = 1 if src.ndim == 2 else src.shape[2]
    image = Image.fromarray(np.ascontiguousarray(src), mode={1: "L", 3: "RGB", 4: "RGBA"}[channels])
    h, w = src.shape[:2]
    affine = (w / size[0], 0.0, 0.0, 0.0, h / size[1], 0.0)
    return np.asarray(image.transform(size, Image.Transform.AFFINE, affine, resample=Image.Resampling.BILINEAR))


def _resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"resize engine {engine!r} is not supported; expected one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "opencv" if _import_cv2(required=False) is not None else "pillow"
    if engine == "opencv":
        _import_cv2()
    return engine


def _import_cv2(*, required: bool = True) -> Any:
    try:
        import cv2
    except ImportError:
        if required:
            raise ConfigError(
                "OpenCV is not installed; install it with: pip install 'edgecls[camera]' (or use engine='pillow')"
            ) from None
        return None
    return cv2
