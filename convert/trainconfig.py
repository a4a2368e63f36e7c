"""Training's hyperparameters (`TrainConfig`, the "train" group of edgecls.convert.options). A leaf module: the
options and the command line read it without loading numpy, and training (.training) imports it without reaching
back up into the options."""

from __future__ import annotations

from dataclasses import dataclass

from edgecls.errors import ConfigError

from .choices import FLIPS, OPTIMIZERS, STRATEGIES


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. ``augment`` scales every augmentation (0 turns it off)."""

    epochs: int = 40
    fine_tune_epochs: int = 15
    fine_tune_layers: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    augment: float = 1.0
    mixup: float = 0.0  # MixUp Beta(a, a) concentration; 0 = off
    weight_decay: float = 0.0  # decoupled weight decay of kernels (Adam becomes AdamW); 0 = none
    optimizer: str = "adam"  # adam, or sgd (Nesterov momentum 0.9)
    patience: int = 8
    class_weights: bool = False
    seed: int = 0
    strategy: str = "default"
    flip: str = "auto"  # horizontal mirroring in augmentation: auto (not for small grayscale images), on, off

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1 (received {self.epochs})"),
            (self.fine_tune_epochs >= 0, f"fine-tune epochs must be >= 0 (received {self.fine_tune_epochs})"),
            (self.fine_tune_layers >= 0, f"fine-tune layers must be >= 0 (received {self.fine_tune_layers})"),
            (self.batch_size >= 1, f"batch size must be at least 1 (received {self.batch_size})"),
            (0 < self.learning_rate < 1, f"learning rate must be in (0, 1) (received {self.learning_rate})"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1) (received {self.label_smoothing})"),
            (0 <= self.augment <= 3, f"augment strength must be in [0, 3] (received {self.augment})"),
            (0 <= self.mixup <= 10, f"mixup must be in [0, 10] (received {self.mixup})"),
            (0 <= self.weight_decay < 1, f"weight decay must be in [0, 1) (received {self.weight_decay})"),
            (self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"),
            (self.patience >= 1, f"patience must be at least 1 (received {self.patience})"),
            (self.strategy in STRATEGIES, f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}"),
            (self.flip in FLIPS, f"flip {self.flip!r} is not one of {', '.join(FLIPS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
