"""What `edgecls convert` can be told, grouped by concern: the model, the data, training, distillation, the int8
export and the parity gate. Each group checks its own values; `ConvertOptions` holds one of each and checks what
spans two (the Edge TPU wants an int8 export). Defaults are what a user gets with no flags: each is set once, in its
dataclass, and the command line shows it from there. `TuneOptions` is what `edgecls tune` is told.

Options are set by their flat names, the command's flags (`ConvertOptions.create(out, arch=..., epochs=...)`,
`options.updated(input_size=64)`), and read as ``options.model.arch`` or, for short, ``options.arch``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls.errors import ConfigError

from .choices import COLORS, IO_TYPES, QUANT_MODES, TARGETS
from .int8methods import DEFAULT_INT8_METHOD, int8_method
from .models import ModelSpec, architecture, resolve_alpha
from .trainconfig import TrainConfig


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)  # str paths from Python callers (a notebook) are fine


@dataclass(frozen=True)
class ModelOptions:
    arch: str = "compact-cnn"
    input_size: int | None = None  # None: the architecture's default
    color: str = "rgb"
    alpha: float | None = None  # MobileNets: width multiplier (None: what --weights names, else the arch's default)
    weights: str = "imagenet"  # MobileNets: imagenet, none, or a local .h5/.keras file
    width: int = 32  # compact-cnn: filters of the first stage
    depth: int = 4
    separable: bool = True
    dropout: float = 0.2
    target: str = "cpu"  # "edgetpu": Edge-TPU-friendly build, pre-flight, and edgetpu_compiler when installed;
    # "imx500": the Raspberry Pi AI Camera's package too (edgecls.convert.imx500)

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ConfigError(f"--color {self.color!r} is not one of {', '.join(COLORS)}")
        if self.target not in TARGETS:
            raise ConfigError(f"--target {self.target!r} is not one of {', '.join(TARGETS)}")
        if self.target == "imx500" and self.color != "rgb":
            raise ConfigError(
                f"--target imx500 needs --color rgb (received --color {self.color}): the AI Camera's "
                "sensor gives the network its RGB image"
            )
        object.__setattr__(self, "alpha", resolve_alpha(self.arch, self.alpha, str(self.weights)))


@dataclass(frozen=True)
class DataOptions:
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    resize: str = "squash"  # how the device fits frames to the input (edgecls.model.preprocess)
    # a model trained elsewhere (convert_model): its labels and the normalisation it expects of 0..255 pixels
    labels: Path | None = None
    mean: float | None = None
    std: float | None = None
    extra_data: tuple[Path, ...] = ()  # more class folders for the training split (frames from `run --collect`)
    cache: bool = True  # keep decoded images on disk (edgecls.convert.cache); False decodes into memory every run
    cache_dir: Path | None = None  # None: edgecls.convert.cache.default_cache_dir()

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", tuple(self.split))
        object.__setattr__(self, "cache_dir", _path(self.cache_dir))
        object.__setattr__(self, "labels", _path(self.labels))
        object.__setattr__(self, "extra_data", tuple(Path(p) for p in self.extra_data or ()))
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both --mean and --std, or neither")


@dataclass(frozen=True)
class DistillOptions:
    teacher: Path | None = None  # distil from this convert output folder or .keras file (convert.distill)
    teacher_weight: float = 0.7

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher", _path(self.teacher))
        if not 0 < self.teacher_weight <= 1:
            raise ConfigError(f"--teacher-weight must be in (0, 1] (received {self.teacher_weight})")


@dataclass(frozen=True)
class ExportOptions:
    quant: str = "int8"
    io: str = "uint8"  # what other runtimes take (MediaPipe Tasks refuses int8 input), and the Edge TPU too
    calibration_samples: int = 300
    int8_method: str = DEFAULT_INT8_METHOD  # see int8methods.INT8_METHODS
    qat_epochs: int = 5
    int8_tune_epochs: int = 16

    def __post_init__(self) -> None:
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"--quant {self.quant!r} is not one of {', '.join(QUANT_MODES)}")
        if self.io not in IO_TYPES:
            raise ConfigError(f"--io {self.io!r} is not one of {', '.join(IO_TYPES)}")
        method = int8_method(self.int8_method)
        if self.quant != "int8" and method.name != DEFAULT_INT8_METHOD:
            raise ConfigError(
                f"--int8-method {method.name} fits a full int8 model; it needs --quant int8 "
                f"(received --quant {self.quant})"
            )
        for name in ("calibration_samples", "qat_epochs", "int8_tune_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (received {getattr(self, name)})")


@dataclass(frozen=True)
class GateOptions:
    max_drop: float = 1.0  # points of top-1 the quantised model may lose
    min_agreement: float = 0.9  # share of test images on which int8 and float give the same top-1
    baseline: bool = True  # also train the seed-cnn baseline to compare against

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 percentage points (received {self.max_drop})")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement must be between 0 and 1 (received {self.min_agreement})")


GROUPS: dict[str, type] = {
    "model": ModelOptions,
    "data": DataOptions,
    "train": TrainConfig,
    "distill": DistillOptions,
    "export": ExportOptions,
    "gate": GateOptions,
}
_GROUP_OF = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class ConvertOptions:
    """One group of each concern, the output folder, and whether TensorFlow's ops run deterministically (the same
    --seed then reproduces a run exactly, at some speed cost)."""

    out_dir: Path
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillOptions = field(default_factory=DistillOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
    gate: GateOptions = field(default_factory=GateOptions)
    deterministic: bool = False
    recipe: str | None = None  # the recipe that filled the options the user left out (edgecls.convert.recipes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.model.target == "edgetpu" and self.export.quant != "int8":
            raise ConfigError(
                f"--target edgetpu needs --quant int8 (received --quant {self.export.quant}): the Edge "
                "TPU runs only 8-bit models"
            )

    @classmethod
    def create(cls, out_dir: str | Path, **options: Any) -> ConvertOptions:
        """Options for a run into ``out_dir`` from flat names (``arch=``, ``epochs=``, ``max_drop=``...)."""
        return cls(out_dir=Path(out_dir)).updated(**options)

    def updated(self, **options: Any) -> ConvertOptions:
        """A copy with the flat-named ``options`` changed, each in its group; an unknown name is a ConfigError
        that names the closest one."""
        by_group: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in options.items():
            if name in ("out_dir", "deterministic", "recipe"):
                top[name] = value
            elif name in _GROUP_OF:
                by_group.setdefault(_GROUP_OF[name], {})[name] = value
            else:
                close = difflib.get_close_matches(name, option_names(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; the options are: {', '.join(option_names())}"
                raise ConfigError(f"unknown option {name!r}{hint}")
        groups = {g: dataclasses.replace(getattr(self, g), **values) for g, values in by_group.items()}
        return dataclasses.replace(self, **top, **groups)

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name; training's prefixed ``train.`` (how report.json records the settings)."""
        values: dict[str, Any] = {"deterministic": self.deterministic, "recipe": self.recipe}
        for group in GROUPS:
            prefix = "train." if group == "train" else ""
            values.update({f"{prefix}{k}": v for k, v in dataclasses.asdict(getattr(self, group)).items()})
        return values

    def __getattr__(self, name: str) -> Any:
        """``options.arch`` for ``options.model.arch``: a read-only shorthand for every grouped option but
        training's (``options.train.seed``)."""
        group = _GROUP_OF.get(name)
        if group is None or group == "train" or name.startswith("__"):
            raise AttributeError(f"ConvertOptions has no option {name!r}")
        return getattr(object.__getattribute__(self, group), name)

    @property
    def method(self) -> str | None:
        """The int8 method that runs (None when the export is not full int8)."""
        return self.export.int8_method if self.export.quant == "int8" else None

    @property
    def qat(self) -> bool:
        return self.method == "qat"

    @property
    def int8_tune(self) -> bool:
        return self.method == "int8-tune"

    @property
    def corrects_biases(self) -> bool:
        """Whether the int8 export corrects biases: post-training int8 only (QAT trains with the rounding)."""
        return self.method == "bias-correction"

    @property
    def channels(self) -> int:
        return 1 if self.model.color == "grayscale" else 3

    def size(self) -> int:
        return self.model.input_size or architecture(self.model.arch).input_size

    def image_cache(self) -> Any:
        """The decoded-image cache these options ask for (None: decode into memory)."""
        from .cache import ImageCache, default_cache_dir, default_max_bytes

        if not self.data.cache:
            return None
        return ImageCache(self.data.cache_dir or default_cache_dir(), default_max_bytes())

    def model_spec(self, num_classes: int, **overrides: Any) -> ModelSpec:
        """The one place a ModelSpec is made from the options (``overrides``: e.g. weights="none")."""
        m = self.model
        spec = ModelSpec(
            num_classes=num_classes,
            input_size=self.size(),
            channels=self.channels,
            dropout=m.dropout,
            width=m.width,
            depth=m.depth,
            separable=m.separable,
            weights=m.weights,
            **({"alpha": m.alpha} if m.alpha is not None else {}),
            edgetpu=m.target == "edgetpu",
        )
        return dataclasses.replace(spec, **overrides)


@dataclass(frozen=True)
class TuneOptions:
    """What `edgecls tune` is told. ``base`` holds the fixed conversion settings (colour, resize, io, weights...)."""

    base: ConvertOptions
    trials: int = 20
    budget_ms: float | None = None
    max_size_kb: float | None = None
    timeout_min: float | None = None
    seed: int = 0
    max_epochs: int = 30
    latency_factor: float = 1.0
    profile: str | None = None
    bench_threads: int = 1
    input_sizes: tuple[int, ...] | None = None  # None: the architecture's tune_sizes (models.ARCHITECTURES)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1 (received {self.trials})")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ConfigError(f"--budget-ms must be positive (received {self.budget_ms})")
        if self.max_size_kb is not None and self.max_size_kb <= 0:
            raise ConfigError(f"--max-size-kb must be positive (received {self.max_size_kb})")
        if self.max_epochs < 1:
            raise ConfigError(f"--max-epochs must be at least 1 (received {self.max_epochs})")
        if self.base.quant != "int8":
            raise ConfigError("edgecls tune measures int8 models; --quant must be int8")

    @property
    def out_dir(self) -> Path:
        return self.base.out_dir

    def sizes(self) -> tuple[int, ...]:
        return self.input_sizes or architecture(self.base.arch).tune_sizes


def option_names() -> tuple[str, ...]:
    """The flat names `ConvertOptions.create` and `edgecls.convert.train` take (out_dir aside)."""
    return ("deterministic", *_GROUP_OF)
