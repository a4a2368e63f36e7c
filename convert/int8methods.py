"""The ways to fit a trained float model to full int8, one registry: `edgecls convert --int8-method NAME`.

Each method takes the trained model and the run's context and returns the int8 TFLite bytes (plus what it wants in
the report). The float model is never changed. Cheap to import (the CLI reads the names at start-up): TensorFlow
and the method's own module load only when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecls.errors import ConfigError


@dataclass(frozen=True)
class Int8Context:
    """What a method gets: the float model, the run's dataset and options, the progress observer, whether the head
    is a sigmoid, the calibration images (normalised as the model expects) and that normalisation."""

    model: Any
    dataset: Any
    options: Any
    observer: Any
    sigmoid: bool
    calibration: Any
    normalize: Callable[[Any], Any]


@dataclass(frozen=True)
class Int8Method:
    name: str
    summary: str
    run: Callable[[Int8Context], tuple[bytes, Any]]
    extra: str | None = None  # the pip extra it needs
    trains: bool = False  # it fine-tunes (a copy of) the model: minutes, not seconds
    compare_with_ptq: bool = False  # the report also shows what post-training int8 gave on the same model


def _post_training(ctx: Int8Context, *, bias_correction: bool) -> tuple[bytes, None]:
    from .tflite_export import to_tflite

    opts = ctx.options
    return to_tflite(
        ctx.model, mode="int8", io_type=opts.io, representative=ctx.calibration, bias_correction=bias_correction
    ), None


def _int8_tune(ctx: Int8Context) -> tuple[bytes, dict[str, Any]]:
    from . import int8tune

    opts, obs = ctx.options, ctx.observer
    images = int8tune.tuning_images(ctx.dataset.images["train"], ctx.dataset.labels("train"), opts.train.seed)
    obs.step(
        f"int8 tuning: rounding with error compensation, then {opts.int8_tune_epochs} epochs of fine-tuning "
        f"against the float model on {len(images)} training images"
    )
    obs.stage("int8-tune", opts.int8_tune_epochs)
    on_epoch = lambda e, n, kl: obs.epoch("int8-tune", e, n, {"kl": kl})
    return int8tune.export_tuned(
        ctx.model,
        ctx.calibration,
        images,
        io_type=opts.io,
        normalize=ctx.normalize,
        epochs=opts.int8_tune_epochs,
        seed=opts.train.seed,
        on_epoch=on_epoch,
    )


def _qat(ctx: Int8Context) -> tuple[bytes, dict[str, Any]]:
    from . import qat

    opts, obs = ctx.options, ctx.observer
    check_supported(INT8_METHODS["qat"], opts.arch)
    spec = opts.model_spec(len(ctx.dataset.classes), weights="none")
    obs.step(f"quantisation-aware fine-tuning, {opts.qat_epochs} epochs")
    qmodel = qat.qat_model(ctx.model, opts.arch, spec)
    history = qat.finetune(
        qmodel,
        ctx.dataset,
        epochs=opts.qat_epochs,
        learning_rate=opts.train.learning_rate / 10,
        batch_size=opts.train.batch_size,
        sigmoid=ctx.sigmoid,
        augment=opts.train.augment,
        seed=opts.train.seed,
        observer=obs,
    )
    obs.step("exporting: int8 TFLite from the quantisation-aware model")
    return qat.to_int8(qmodel, io_type=opts.io, representative=ctx.calibration), history


INT8_METHODS: dict[str, Int8Method] = {
    m.name: m
    for m in (
        Int8Method(
            "ptq",
            "post-training quantisation from the calibration images, nothing more",
            lambda ctx: _post_training(ctx, bias_correction=False),
        ),
        Int8Method(
            "bias-correction",
            "post-training quantisation, then conv biases corrected for the mean error of "
            "weight rounding (seconds; the default)",
            lambda ctx: _post_training(ctx, bias_correction=True),
        ),
        Int8Method(
            "int8-tune",
            "error-compensating rounding, then fine-tuning the int8 weights to match the float "
            "model (a few minutes; for fine-tuned MobileNets)",
            _int8_tune,
            trains=True,
        ),
        Int8Method(
            "qat",
            "quantisation-aware fine-tuning with fake quantisation, then export (needs the qat extra)",
            _qat,
            extra="qat",
            trains=True,
            compare_with_ptq=True,
        ),
    )
}
DEFAULT_INT8_METHOD = "bias-correction"


def int8_method(name: str) -> Int8Method:
    if name not in INT8_METHODS:
        raise ConfigError(f"--int8-method {name!r} is not one of {', '.join(INT8_METHODS)}")
    return INT8_METHODS[name]


def check_supported(method: Int8Method, arch: str) -> None:
    """ConfigError before any training when ``method`` cannot work on ``arch`` or its extra is not installed."""
    if method.name != "qat":
        return
    from . import qat
    from .models import QAT_ARCHS

    if arch not in QAT_ARCHS:
        raise ConfigError(
            f"--int8-method qat supports --arch {', '.join(QAT_ARCHS)} (received {arch}): "
            "MobileNetV3's hard-swish and squeeze-excite blocks are not in the toolkit's registry"
        )
    qat.import_toolkit()
