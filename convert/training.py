"""Training: tf.data input pipeline with Keras augmentation layers, early stopping, checkpoints, two-stage transfer."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .cache import ImageStore, rows_of
from .choices import FLIPS, OPTIMIZERS, STRATEGIES
from .data import Dataset
from .distributed import make_strategy
from .models import base_model
from .staging import check_room, saved_bytes
from .trainconfig import TrainConfig

# TrainConfig (.trainconfig) and the choices it checks (.choices) are importable from here too.
__all__ = ["FLIPS", "OPTIMIZERS", "STRATEGIES", "TrainConfig", "make_strategy"]
SMALL_GRAY = 32  # grayscale images this small are glyphs, digits or sensor maps: a mirror image is another thing


def flips(flip: str, image_shape: tuple[int, ...]) -> bool:
    """Whether augmentation mirrors images: "auto" does for photos, not for small grayscale images (a mirrored digit
    or letter is not the same class)."""
    if flip != "auto":
        return flip == "on"
    height, width, channels = image_shape[-3:]
    return not (channels == 1 and max(height, width) <= SMALL_GRAY)


class TrainingObserver(Protocol):
    """What the pipeline tells whoever shows progress (the CLI draws it; the library never prints)."""

    def stage(self, name: str, epochs: int) -> None: ...

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None: ...


class SilentObserver:
    def stage(self, name: str, epochs: int) -> None:
        pass

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        pass


def deterministic() -> None:
    """Make TensorFlow's ops deterministic, so that --seed reproduces a run exactly on the same machine and versions
    (without it, parallel reductions and augmentation make two runs differ by several points on small datasets)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def make_augmenter(strength: float, seed: int, flip: bool = True) -> Any:
    """Keras preprocessing layers, applied to training batches only (never part of the exported model)."""
    import keras

    layers = keras.layers
    s = strength
    return keras.Sequential(
        [
            *([layers.RandomFlip("horizontal", seed=seed)] if flip else []),
            layers.RandomRotation(0.08 * s, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom((-0.15 * s, 0.15 * s), fill_mode="reflect", seed=seed + 2),
            layers.RandomTranslation(0.08 * s, 0.08 * s, fill_mode="reflect", seed=seed + 3),
            layers.RandomBrightness(0.15 * s, value_range=(0, 255), seed=seed + 4),
            layers.RandomContrast(0.2 * s, value_range=(0, 255), seed=seed + 5),
        ],
        name="augment",
    )


def make_mixup(alpha: float, seed: int) -> Any:
    """MixUp (Zhang et al. 2018) on training batches: each image blended with another of the batch, labels alike."""
    import keras

    layer = keras.layers.MixUp(alpha=alpha, seed=seed + 6)

    def mix(images: Any, labels: Any) -> tuple[Any, Any]:
        out = layer({"images": images, "labels": labels}, training=True)
        return out["images"], out["labels"]

    return mix


def targets(labels: np.ndarray, num_classes: int, sigmoid: bool) -> np.ndarray:
    """Training targets: one float per image for a sigmoid head, one-hot rows for softmax."""
    if sigmoid:
        return labels.astype(np.float32)[:, None]
    return np.eye(num_classes, dtype=np.float32)[labels]


def make_datasets(dataset: Dataset, config: TrainConfig, sigmoid: bool, teacher: Any = None) -> tuple[Any, Any]:
    """tf.data pipelines: decoded arrays -> cache -> shuffle -> batch -> augment (train only) -> prefetch.

    With a ``teacher`` (edgecls.convert.distill.Teacher) the training targets blend in its probabilities for the augmented
    (and mixed) batch; validation keeps the true labels, so early stopping watches the real task.
    """
    k = len(dataset.classes)

    def pipeline(split: str, train: bool) -> Any:
        return input_pipeline(
            dataset.images[split],
            targets(dataset.labels(split), k, sigmoid),
            config,
            train=train,
            teacher=teacher,
            sigmoid=sigmoid,
        )

    return pipeline("train", True), pipeline("val", False)


def input_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    train: bool,
    teacher: Any = None,
    sigmoid: bool = False,
    batch_size: int | None = None,
    seed: int | None = None,
    sample_weights: np.ndarray | None = None,
    endless: bool = False,
) -> Any:
    """One tf.data pipeline (see `make_datasets`); ``endless`` repeats it in full batches only (a multi-worker
    shard, whose steps per epoch are counted by the caller)."""
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    seed = config.seed if seed is None else seed
    batch = batch_size or config.batch_size
    if isinstance(x, ImageStore):
        ds = _store_batches(x, y, sample_weights, batch, train=train, seed=seed, endless=endless)
    else:
        tensors = (x, y) if sample_weights is None else (x, y, sample_weights)
        ds = tf.data.Dataset.from_tensor_slices(tensors).cache()
        if train:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        if endless:
            ds = ds.repeat()
        ds = ds.batch(batch, drop_remainder=endless)
    ds = ds.map(lambda a, *rest: (tf.cast(a, tf.float32), *rest), num_parallel_calls=autotune)
    if train and config.augment > 0:
        augmenter = make_augmenter(config.augment, seed, flip=flips(config.flip, x.shape))
        ds = ds.map(lambda a, *rest: (augmenter(a, training=True), *rest), num_parallel_calls=autotune)
    if train and config.mixup > 0:
        mix = make_mixup(config.mixup, seed)
        ds = ds.map(lambda a, b, *rest: (*mix(a, b), *rest), num_parallel_calls=autotune)
    if train and teacher is not None:  # one call at a time: the teacher's own ops use the cores
        ds = ds.map(lambda a, b, *rest: (a, teacher.blend(a, b, sigmoid=sigmoid), *rest))
    return ds.prefetch(autotune)


def _store_batches(
    x: ImageStore, y: np.ndarray, weights: np.ndarray | None, batch: int, *, train: bool, seed: int, endless: bool
) -> Any:
    """Batches read from the decoded-image cache: the shuffle, repeat and batching run over row numbers, and each
    batch's rows are read from disk (`ImageStore.take`) as the pipeline asks for them, a few batches ahead. Memory
    holds those batches, never the dataset."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(len(x))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if endless:
        ds = ds.repeat()
    ds = ds.batch(batch, drop_remainder=endless)
    labels = tf.constant(y)
    extra = () if weights is None else (tf.constant(weights),)
    shape = (None, *x.shape[1:])

    def read(rows: Any) -> tuple[Any, ...]:
        images = tf.numpy_function(lambda r: x.take(r), [rows], tf.uint8, stateful=False)
        images.set_shape(shape)
        return (images, tf.gather(labels, rows), *(tf.gather(w, rows) for w in extra))

    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def compile_model(
    model: Any,
    *,
    learning_rate: float,
    sigmoid: bool,
    label_smoothing: float,
    decay_steps: int,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
) -> None:
    """Adam (or SGD with Nesterov momentum 0.9) with a cosine learning-rate decay over the stage (to 1% of the
    start), so the last epochs refine; decoupled weight decay when ``weight_decay`` is set (AdamW for Adam; kernels
    only: not biases or BatchNorm)."""
    import keras

    if sigmoid:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, decay_steps), alpha=0.01)
    decay = weight_decay if weight_decay > 0 else None
    if optimizer == "sgd":
        opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=decay)
    elif decay:
        opt = keras.optimizers.AdamW(schedule, weight_decay=decay)
    else:
        opt = keras.optimizers.Adam(schedule)
    if decay:
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])


class StopRequest:
    """A request to end training early and keep the model, as from a first Ctrl-C during a long `edgecls convert`.

    Whoever owns the signal handler (the CLI) calls `request()`. While `train` is fitting, the request is taken
    and it returns True: training ends after the current batch, with the best weights so far by validation loss,
    and the caller's work goes on (export, verification). Otherwise, or when a request was already taken, it returns
    False, and the caller interrupts at once.
    """

    def __init__(self) -> None:
        self._fitting = threading.Event()
        self._requested = threading.Event()

    def request(self) -> bool:
        if not self._fitting.is_set() or self._requested.is_set():
            return False
        self._requested.set()
        return True

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        self._fitting.set()
        try:
            yield
        finally:
            self._fitting.clear()


def train(
    model: Any,
    dataset: Dataset,
    config: TrainConfig,
    *,
    sigmoid: bool,
    checkpoint_dir: Path,
    strategy: Any,
    observer: TrainingObserver | None = None,
    teacher: Any = None,
    should_stop: Callable[[], bool] | None = None,
    stop_request: StopRequest | None = None,
) -> dict[str, Any]:
    """Fit the model (head first on a frozen base for transfer models, then fine-tune); return the merged history.

    The history has per-epoch lists ("loss", "accuracy", "val_loss", "val_accuracy") and "stages": where each
    stage starts, for the training-curves plot, and its "kept_epoch": the epoch (1-based over the whole history)
    whose weights it ended with, the lowest validation loss that early stopping watched (None: the last weights).
    ``teacher``: distil from it (edgecls.convert.distill). ``should_stop`` is asked after every batch; when it says yes,
    training raises KeyboardInterrupt there (see stop_check).
    ``stop_request``: when taken (see StopRequest), training ends after the current batch, later stages are skipped,
    the model gets the stage's best checkpoint (lowest validation loss, the unfinished epoch included), and the
    history says so under "stopped_early".
    """
    from . import distributed

    observer = observer or SilentObserver()
    weights = dataset.class_weights() if config.class_weights and not sigmoid else None
    multi_worker = distributed.is_multi_worker(strategy)
    if multi_worker:
        inputs = _worker_inputs(dataset, config, sigmoid, teacher, weights, strategy)
        stop_request = None  # one worker cannot end early alone: the others would wait for it at the next step
    else:
        inputs = _Inputs(*make_datasets(dataset, config, sigmoid, teacher))
    history = _new_history(inputs.cluster)
    base = base_model(model)
    pretrained = base is not None and not base.trainable  # models.create_model freezes pretrained bases only
    stages = _stages(config, pretrained)
    for index, (name, epochs, lr) in enumerate(stages):
        if name == "fine-tune":
            _unfreeze_top(base, config.fine_tune_layers)
        steps = epochs * max(1, -(-len(dataset.samples["train"]) // config.batch_size))
        with strategy.scope():
            _compile(model, config, lr, sigmoid, steps)
        fit_model, fit_train, fit_val = model, inputs.train, inputs.val
        on_features = pretrained and not base.trainable and not multi_worker and head_on_features(config, teacher)
        if on_features:  # the frozen backbone runs once; the head trains on its features
            observer.stage("backbone features", 1)
            fit_model, fit_train, fit_val = _head_on_features(model, dataset, config, sigmoid)
            _compile(fit_model, config, lr, sigmoid, steps)
        observer.stage(name, epochs)
        history["stages"].append(
            {
                "name": name,
                "start_epoch": len(history["loss"]),
                "learning_rate": lr,
                **({"on_features": True} if on_features else {}),
            }
        )
        callbacks, best, early = _callbacks(config, name, epochs, checkpoint_dir, observer, should_stop, stop_request)
        if multi_worker:  # Keras's fit does not run under this strategy (see .distributed)
            fitted = distributed.fit(
                model,
                strategy,
                make_train=fit_train,
                val=fit_val,
                n_train=len(dataset.samples["train"]),
                batch_size=config.batch_size,
                epochs=epochs,
                callbacks=callbacks,
                sigmoid=sigmoid,
            )
        else:
            fitted = _keras_fit(fit_model, fit_train, fit_val, epochs, weights, callbacks, stop_request)
        stopped = stop_request is not None and stop_request.requested
        if stopped and best.best_epoch is not None:
            fit_model.load_weights(best.checkpoint_path)  # the head's own layers, when it trained on features
        _record_stage(history, fitted, best, early, stopped)
        if stopped:
            history["stopped_early"] = {
                "stage": name,
                "epoch": len(fitted.get("loss", [])),
                "epochs": epochs,
                "best_epoch": None if best.best_epoch is None else best.best_epoch + 1,
                "skipped_stages": [later[0] for later in stages[index + 1 :]],
            }
            break
    return history


@dataclass(frozen=True)
class _Inputs:
    """What the stages fit on: the training and validation tf.data pipelines of one process; or, on a multi-worker
    cluster, ``train(shard, shards, per_replica_batch)`` giving a shard's pipeline, the validation split as arrays
    (images, targets), and the cluster's shape for the history."""

    train: Any
    val: Any
    cluster: dict[str, Any] | None = None


def _worker_inputs(
    dataset: Dataset, config: TrainConfig, sigmoid: bool, teacher: Any, weights: dict[int, float] | None, strategy: Any
) -> _Inputs:
    """A multi-worker cluster's inputs: each worker trains on every n-th training image, from its own seed."""
    from . import distributed

    k = len(dataset.classes)
    x_train, y_train = dataset.images["train"], targets(dataset.labels("train"), k, sigmoid)
    w_train = (
        None if weights is None else np.array([weights[int(i)] for i in dataset.labels("train")], dtype=np.float32)
    )

    def shard_pipeline(shard: int, shards: int, per_replica_batch: int) -> Any:
        return input_pipeline(
            rows_of(x_train, slice(shard, None, shards)),
            y_train[shard::shards],
            config,
            train=True,
            teacher=teacher,
            sigmoid=sigmoid,
            batch_size=per_replica_batch,
            seed=config.seed + shard,
            endless=True,
            sample_weights=None if w_train is None else w_train[shard::shards],
        )

    workers = distributed.role(strategy).num_workers
    cluster = {
        "workers": workers,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch": config.batch_size,
        "steps_per_epoch": max(1, len(x_train) // config.batch_size),
        "train_images_per_worker": [len(range(i, len(x_train), workers)) for i in range(workers)],
    }
    val = (dataset.images["val"], targets(dataset.labels("val"), k, sigmoid))
    return _Inputs(shard_pipeline, val, cluster)


def _new_history(cluster: dict[str, Any] | None) -> dict[str, Any]:
    history: dict[str, Any] = {
        "loss": [],
        "accuracy": [],
        "val_loss": [],
        "val_accuracy": [],
        "epoch_s": [],
        "stages": [],
    }
    if cluster is not None:
        history["cluster"] = cluster
    return history


def _stages(config: TrainConfig, pretrained: bool) -> list[tuple[str, int, float]]:
    """(name, epochs, learning rate) of each stage: a pretrained base trains its head first, then fine-tunes at a
    tenth of the learning rate; anything else trains as one network."""
    if pretrained and config.fine_tune_epochs > 0 and config.fine_tune_layers > 0:
        return [
            ("head", config.epochs, config.learning_rate),
            ("fine-tune", config.fine_tune_epochs, config.learning_rate / 10),
        ]
    return [("train", config.epochs, config.learning_rate)]


def _compile(model: Any, config: TrainConfig, learning_rate: float, sigmoid: bool, decay_steps: int) -> None:
    compile_model(
        model,
        learning_rate=learning_rate,
        sigmoid=sigmoid,
        label_smoothing=config.label_smoothing,
        decay_steps=decay_steps,
        weight_decay=config.weight_decay,
        optimizer=config.optimizer,
    )


def _keras_fit(
    model: Any,
    train_ds: Any,
    val_ds: Any,
    epochs: int,
    weights: dict[int, float] | None,
    callbacks: list[Any],
    stop_request: StopRequest | None,
) -> dict[str, list[float]]:
    """Keras's own fit, during which a stop request can be taken; its History dict."""
    with stop_request.fitting() if stop_request is not None else contextlib.nullcontext():
        return model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            class_weight=weights,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=0,
            callbacks=callbacks,
        ).history


def _record_stage(
    history: dict[str, Any], fitted: dict[str, list[float]], best: Any, early: Any, stopped: bool
) -> None:
    """The stage's epochs added to the history, and which epoch's weights it kept: the best checkpoint's when it was
    stopped, early stopping's best when that restored one, else the last (None)."""
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history[key].extend(float(v) for v in fitted.get(key, []))
    history["epoch_s"].extend(round(t, 2) for t in best.epoch_seconds)
    kept = best.best_epoch if stopped else early.best_epoch if early.best_weights is not None else None
    stage = history["stages"][-1]
    stage["kept_epoch"] = None if kept is None else stage["start_epoch"] + kept + 1


def head_on_features(config: TrainConfig, teacher: Any = None) -> bool:
    """Whether a frozen backbone's head trains on features computed once: when its images are not augmented (no
    augmentation, no MixUp, no teacher blending), every epoch would run the backbone on the same pixels again."""
    return config.augment == 0 and config.mixup == 0 and teacher is None


def _head_on_features(model: Any, dataset: Dataset, config: TrainConfig, sigmoid: bool) -> tuple[Any, Any, Any]:
    """The model's head as a model of its own (the same layer objects, so training it trains the model's head),
    and tf.data pipelines of the frozen backbone's pooled features for the training and validation images, each
    image run through the backbone once, a batch at a time."""
    import keras
    import tensorflow as tf

    pool = model.get_layer("pool")
    extractor = keras.Model(model.inputs, pool.output)
    head_input = keras.Input(tuple(pool.output.shape[1:]), name="features")
    x = head_input
    for layer in model.layers[model.layers.index(pool) + 1 :]:
        x = layer(x)
    head = keras.Model(head_input, x, name=f"{model.name}_head")
    k = len(dataset.classes)

    def features(images: Any) -> np.ndarray:
        rows = [
            np.asarray(extractor.predict_on_batch(np.asarray(images[i : i + 64], dtype=np.float32)))
            for i in range(0, len(images), 64)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, *pool.output.shape[1:]), np.float32)

    def pipeline(split: str, train: bool) -> Any:
        ds = tf.data.Dataset.from_tensor_slices(
            (features(dataset.images[split]), targets(dataset.labels(split), k, sigmoid))
        )
        if train:
            ds = ds.shuffle(len(dataset.samples[split]), seed=config.seed, reshuffle_each_iteration=True)
        return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)

    return head, pipeline("train", True), pipeline("val", False)


def _unfreeze_top(base: Any, n_layers: int) -> None:
    import keras

    base.trainable = True
    for layer in base.layers[:-n_layers]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # small fine-tuning sets wreck BatchNorm statistics


def _callbacks(
    config: TrainConfig,
    stage: str,
    epochs: int,
    checkpoint_dir: Path,
    observer: TrainingObserver,
    should_stop: Callable[[], bool] | None = None,
    stop_request: StopRequest | None = None,
) -> tuple[list[Any], Any, Any]:
    """The stage's callbacks, and among them the best-weights checkpoint (its ``best_epoch`` and
    ``checkpoint_path``) and the early stopping whose best weights the stage ends with."""
    import keras

    checkpoint = _checkpoint_callback(checkpoint_dir, stage)
    report = _report_callback(observer, stage, epochs)
    report.seconds = checkpoint.epoch_seconds  # the stage's epoch times, kept for the history
    # With cosine decay the best epochs come late: watch only the last third, so a noisy validation loss in the
    # middle of the schedule cannot stop training before the learning rate has come down.
    early = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True, start_from_epoch=(2 * epochs) // 3
    )
    return [early, checkpoint, report, *_stop_callbacks(should_stop, stop_request)], checkpoint, early


def _report_callback(observer: TrainingObserver, stage: str, epochs: int) -> Any:
    """Tells the observer each epoch's logs, its wall time ("epoch_s") and an estimate of the stage's time left
    ("eta_s": the mean epoch so far times the epochs left; early stopping may end the stage sooner)."""
    import keras

    class Report(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._start = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            timing = {
                "epoch_s": self.seconds[-1],
                "eta_s": sum(self.seconds) / len(self.seconds) * (epochs - epoch - 1),
            }
            observer.epoch(stage, epoch + 1, epochs, {**{k: float(v) for k, v in (logs or {}).items()}, **timing})

    return Report()


def _checkpoint_callback(checkpoint_dir: Path, stage: str) -> Any:
    """Keeps the stage's best weights so far by validation loss (``best``, ``best_epoch``, ``checkpoint_path``),
    written to a temporary file and renamed, so a crash never leaves half a file."""
    import keras

    class AtomicCheckpoint(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = float("inf")
            self.best_epoch: int | None = None
            self.epoch_seconds: list[float] = []
            self.checkpoint_path = checkpoint_dir / f"best-{stage}.weights.h5"

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            loss = float((logs or {}).get("val_loss", float("inf")))
            if loss < self.best:
                self.best, self.best_epoch = loss, epoch
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                # a disk that fills during an epoch: one error line now, not a write failing inside HDF5, which
                # cannot recover from it (the process crashes at exit: h5py/h5py#914)
                check_room(checkpoint_dir, 2 * saved_bytes(self.model.count_params()), "a training checkpoint")
                tmp = checkpoint_dir / f".best-{stage}.tmp.weights.h5"
                self.model.save_weights(tmp)
                os.replace(tmp, self.checkpoint_path)

    return AtomicCheckpoint()


def _stop_callbacks(should_stop: Callable[[], bool] | None, stop_request: StopRequest | None) -> list[Any]:
    """After every batch: interrupt when ``should_stop`` says so (see stop_check); end fit once ``stop_request`` is
    taken (Keras still validates the unfinished epoch)."""
    import keras

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            stop_check(should_stop)

    class EndEarly(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            if stop_request.requested:  # type: ignore[union-attr]
                self.model.stop_training = True

    return [*([Stop()] if should_stop is not None else []), *([EndEarly()] if stop_request is not None else [])]


def stop_check(should_stop: Callable[[], bool] | None) -> None:
    """Raise KeyboardInterrupt when ``should_stop`` says so.

    A Ctrl-C that arrives as an asynchronous KeyboardInterrupt can be lost: raised while TensorFlow traces a
    function, it is turned into an unrelated error or swallowed, and training goes on. A command line that must stop
    cleanly (`edgecls tune`) therefore lets its SIGINT handler only set a flag, and the work asks here, at points
    where an exception unwinds cleanly.
    """
    if should_stop is not None and should_stop():
        raise KeyboardInterrupt
