"""Model architectures, one registry: `create_model(name, spec)` is the single way in.

Every model takes raw pixels (0..255) and normalises inside the graph, so the exported model needs nothing but
resize and colour order on the device. Only ops that quantise fully to int8 and map to the Edge TPU are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls.errors import ConfigError, ConversionError

# Keras' default 0.99 needs hundreds of steps before the moving statistics are usable; small datasets give tens
# per epoch, and validation (which uses those statistics) would look stuck at chance for many epochs.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Architecture:
    """One entry of the registry: how to build it and the facts the rest of the converter asks about it. The CLI's
    --arch choices, tune's search space and quantisation-aware training's support are all read from here."""

    name: str
    build: Callable[[ModelSpec], Any]
    input_size: int  # the default square input
    tune_sizes: tuple[int, ...]  # input sizes `edgecls tune` searches by default
    family: str  # "seed" (the tutorial CNN), "compact" (our CNN: width, depth, separable), "mobilenet" (transfer)
    alphas: tuple[float, ...] = ()  # MobileNet width multipliers
    default_alpha: float | None = None  # the width multiplier a MobileNet gets when neither --alpha nor the weights say
    qat: bool = True  # quantisation-aware training can rebuild it (the toolkit's registry covers its layers)
    summary: str = ""

    @property
    def transfer(self) -> bool:
        """Trained as a frozen pretrained base with a new head, then fine-tuned."""
        return self.family == "mobilenet"


ARCHITECTURES: dict[str, Architecture] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What every builder receives. ``weights``: "imagenet", "none" or a local .h5/.keras path (MobileNets)."""

    num_classes: int
    input_size: int
    channels: int = 3
    dropout: float = 0.2
    width: int = 32
    depth: int = 4
    separable: bool = True
    alpha: float = 0.25
    weights: str = "none"
    edgetpu: bool = False  # build only from ops the Edge TPU compiler maps (MobileNetV3: the minimalistic variant)
    flat: bool = False  # MobileNets: the base's layers inline, not a nested model (for quantisation-aware training)
    # compact-cnn's activations are capped (ReLU6, as in MobileNet): int8 quantises each activation tensor with one
    # scale, and an unbounded ReLU lets a few large values stretch that scale for every other value. None: uncapped.
    relu_cap: float | None = 6.0


def register(name: str, **facts: Any) -> Callable[[Callable[[ModelSpec], Any]], Callable[[ModelSpec], Any]]:
    """Add a builder to the registry with its `Architecture` facts (input_size, tune_sizes, family, ...)."""

    def wrap(fn: Callable[[ModelSpec], Any]) -> Callable[[ModelSpec], Any]:
        ARCHITECTURES[name] = Architecture(name=name, build=fn, summary=(fn.__doc__ or "").split("\n")[0], **facts)
        return fn

    return wrap


def architecture(name: str) -> Architecture:
    """The registry entry for ``name``; ConfigError naming the choices when there is none."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; available: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def create_model(name: str, spec: ModelSpec) -> Any:
    """Build architecture ``name`` (see ARCHITECTURES) for ``spec``; the model is not compiled."""
    arch = architecture(name)
    if spec.num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes (received {spec.num_classes})")
    if not 0.0 <= spec.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1) (received {spec.dropout})")
    return arch.build(spec)


def uses_sigmoid(name: str, num_classes: int) -> bool:
    """The seed CNN keeps the classic binary head: one sigmoid unit and binary cross-entropy for two classes."""
    return name == "seed-cnn" and num_classes == 2


_KERAS_MODULE: list[Any] = []  # set by `built_with`: the Keras the builders use (default: Keras 3)


def _keras() -> Any:
    if _KERAS_MODULE:
        return _KERAS_MODULE[-1]
    import keras

    return keras


class built_with:
    """``with built_with(tf_keras): create_model(...)`` builds the same architecture with another Keras (the
    quantisation-aware training path needs tf_keras models for the model-optimization toolkit)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __enter__(self) -> Any:
        _KERAS_MODULE.append(self.module)
        return self.module

    def __exit__(self, *exc: object) -> None:
        _KERAS_MODULE.pop()


def _head(keras: Any, x: Any, spec: ModelSpec, name: str) -> Any:
    if spec.dropout > 0:
        x = keras.layers.Dropout(spec.dropout, name="head_dropout")(x)
    if uses_sigmoid(name, spec.num_classes):
        return keras.layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return keras.layers.Dense(spec.num_classes, activation="softmax", name="predictions")(x)


@register("seed-cnn", input_size=64, tune_sizes=(64,), family="seed")
def seed_cnn(spec: ModelSpec) -> Any:
    """The classic tutorial CNN, exactly: Conv2D(32, 3x3, relu) on 64x64, MaxPooling 2x2, Flatten, Dense(128, relu),
    then Dense(1, sigmoid) for two classes or softmax for more. No dropout: it is the untuned baseline."""
    keras = _keras()
    if spec.input_size != 64:
        raise ConfigError(f"seed-cnn is defined on 64x64 inputs (received --input-size {spec.input_size}); omit it")
    inputs = keras.Input((64, 64, spec.channels), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="normalize")(inputs)
    x = keras.layers.Conv2D(32, (3, 3), activation="relu")(x)
    x = keras.layers.MaxPooling2D((2, 2))(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    if uses_sigmoid("seed-cnn", spec.num_classes):
        outputs = keras.layers.Dense(1, activation="sigmoid", name="predictions")(x)
    else:
        outputs = keras.layers.Dense(spec.num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def stride_plan(input_size: int, depth: int) -> list[int]:
    """The strides of compact-cnn's stem and its ``depth`` stages: each halves the resolution until the last
    feature map would be under 3 pixels, so a 28-pixel digit ends at 4x4, as a 96- or 128-pixel photo ends at 3-4
    pixels (five halvings of 28 pixels would leave one). Where fewer halvings are needed, the stem keeps the full
    resolution first, then the last stages."""
    halvings = max(1, min(depth + 1, int(math.log2(max(input_size, 6) / 3))))
    strides = [2] * (depth + 1)
    for index in ([0, *range(depth, 0, -1)])[: depth + 1 - halvings]:
        strides[index] = 1
    return strides


@register("compact-cnn", input_size=96, tune_sizes=(48, 64, 96, 128), family="compact")
def compact_cnn(spec: ModelSpec) -> Any:
    """Our small edge CNN: a conv stem and ``depth`` stages of conv/BN/ReLU (depthwise-separable when ``separable``),
    each doubling the width (capped at 8x) and halving the resolution as far as the input size allows (see
    `stride_plan`), global average pooling, dropout."""
    keras = _keras()
    layers = keras.layers
    if spec.depth < 1 or spec.width < 4:
        raise ConfigError(
            f"compact-cnn needs depth >= 1 and width >= 4 (received depth {spec.depth}, width {spec.width})"
        )
    inputs = keras.Input((spec.input_size, spec.input_size, spec.channels), name="image")
    x = layers.Rescaling(1.0 / 255, name="normalize")(inputs)

    def conv_bn_relu(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
        return layers.ReLU(max_value=spec.relu_cap, name=f"{name}_relu")(x)

    strides = stride_plan(spec.input_size, spec.depth)
    x = conv_bn_relu(x, spec.width, 3, strides[0], "stem")
    for stage in range(spec.depth):
        filters = spec.width * min(8, 2 ** (stage + 1))
        if spec.separable:
            for block, stride in enumerate((strides[stage + 1], 1)):
                name = f"s{stage}b{block}"
                x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
                x = layers.ReLU(max_value=spec.relu_cap, name=f"{name}_dw_relu")(x)
                x = conv_bn_relu(x, filters, 1, 1, f"{name}_pw")
        else:
            x = conv_bn_relu(x, filters, 3, strides[stage + 1], f"s{stage}a")
            x = conv_bn_relu(x, filters, 3, 1, f"s{stage}b")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _head(keras, x, spec, "compact-cnn"), name="compact_cnn")


def _mobilenet(name: str, spec: ModelSpec) -> Any:
    keras = _keras()
    layers = keras.layers
    alphas = ARCHITECTURES[name].alphas
    if spec.alpha not in alphas:
        raise ConfigError(f"{name} supports --alpha {', '.join(map(str, alphas))} (received {spec.alpha})")
    if spec.input_size < 32:
        raise ConfigError(f"{name} needs --input-size of at least 32 (received {spec.input_size})")
    weights = _resolve_weights(spec.weights)
    size = spec.input_size
    inputs = keras.Input((size, size, spec.channels), name="image")
    x = inputs
    if spec.channels == 1:  # ImageNet weights expect three channels: repeat the gray one inside the model
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    common: dict[str, Any] = {
        "input_shape": (size, size, 3),
        "include_top": False,
        "weights": weights,
        "alpha": spec.alpha,
    }
    try:
        if name == "mobilenet_v3_small":
            if spec.flat:  # the base's layers inline in this model (what the quantisation toolkit can wrap)
                common["input_tensor"] = x
            base = keras.applications.MobileNetV3Small(
                include_preprocessing=True,
                minimalistic=spec.edgetpu,
                **common,  # no hard-swish or SE on the Edge TPU
            )
        else:
            x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(x)  # what these weights were trained on
            if spec.flat:
                common["input_tensor"] = x
            builder = keras.applications.MobileNet if name == "mobilenet_v1" else keras.applications.MobileNetV2
            base = builder(**common)
    except (ValueError, OSError) as exc:
        raise ConversionError(f"cannot build {name} with weights {spec.weights!r}: {exc}") from None
    if spec.flat:
        x = base.output
    elif weights is None:
        x = base(x)  # from random weights: an ordinary network, every layer (BatchNorm too) trains
    else:
        base.trainable = False  # pretrained: the head trains first on a frozen base (see training.train)
        x = base(x, training=False)  # BatchNorm keeps ImageNet statistics, also while fine-tuning
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _head(keras, x, spec, name), name=name)


def weights_alpha(weights: str) -> float | None:
    """The width multiplier a local weights file names, as Keras names its downloads
    (``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``, ``mobilenet_1_0_224_tf_no_top.h5``) and
    as people keep them (``mobilenet_v2_1.0_224_no_top.h5``); None when it names none."""
    import re

    if weights in ("imagenet", "none"):
        return None
    name = Path(weights).name
    found = re.search(r"(?:^|_)(0[._](?:25|35|5|75)|1[._](?:0|3|4))_(?:96|128|160|192|224)(?:_|\.|$)", name)
    return float(found.group(1).replace("_", ".")) if found else None


def resolve_alpha(arch: str, alpha: float | None, weights: str) -> float | None:
    """The width multiplier a MobileNet is built with: ``alpha`` when given (ConfigError when the weights file names
    another), else the one the weights file names, else the architecture's default. None for other families."""
    entry = ARCHITECTURES.get(arch)
    if entry is None or entry.family != "mobilenet":  # not a MobileNet, or a model trained elsewhere (--calibration)
        return alpha
    named = weights_alpha(weights)
    if alpha is not None and named is not None and abs(alpha - named) > 1e-9:
        raise ConfigError(
            f"--weights {weights} holds {arch} alpha {named} weights, but --alpha {alpha} was given; "
            f"leave --alpha out, or give the {arch} alpha {alpha} weights"
        )
    chosen = alpha if alpha is not None else named if named is not None else entry.default_alpha
    if chosen not in entry.alphas:
        raise ConfigError(f"{arch} supports --alpha {', '.join(map(str, entry.alphas))} (received {chosen})")
    return chosen


def _resolve_weights(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"  # Keras downloads and checks them on a connected machine
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"--weights {weights!r}: expected 'imagenet', 'none' or a local .h5/.keras file that exists")
    return str(path)


@register(
    "mobilenet_v1",
    input_size=128,
    tune_sizes=(96, 128, 160),
    family="mobilenet",
    alphas=(0.25, 0.5, 0.75, 1.0),
    default_alpha=0.25,
)
def mobilenet_v1(spec: ModelSpec) -> Any:
    """MobileNet V1 (ImageNet weights), frozen then fine-tuned."""
    return _mobilenet("mobilenet_v1", spec)


@register(
    "mobilenet_v2",
    input_size=128,
    tune_sizes=(96, 128, 160),
    family="mobilenet",
    alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    default_alpha=1.0,
)
def mobilenet_v2(spec: ModelSpec) -> Any:
    """MobileNet V2 (ImageNet weights), frozen then fine-tuned."""
    return _mobilenet("mobilenet_v2", spec)


# MobileNetV3's hard-swish and squeeze-excite blocks are not in the quantisation toolkit's registry: no QAT.
@register(
    "mobilenet_v3_small",
    input_size=128,
    tune_sizes=(96, 128, 160),
    family="mobilenet",
    alphas=(0.75, 1.0),
    default_alpha=1.0,
    qat=False,
)
def mobilenet_v3_small(spec: ModelSpec) -> Any:
    """MobileNet V3 small (ImageNet weights; minimalistic for the Edge TPU), frozen then fine-tuned."""
    return _mobilenet("mobilenet_v3_small", spec)


# Derived views of the registry, for the code that asks one question of every architecture.
DEFAULT_INPUT_SIZE = {name: a.input_size for name, a in ARCHITECTURES.items()}
MOBILENET_ALPHAS = {name: a.alphas for name, a in ARCHITECTURES.items() if a.family == "mobilenet"}
QAT_ARCHS = tuple(name for name, a in ARCHITECTURES.items() if a.qat)


def base_model(model: Any) -> Any | None:
    """The backbone of a MobileNet model: its nested Keras model (None for our own architectures)."""
    import keras

    return next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)
