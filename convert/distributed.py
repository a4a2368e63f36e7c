"""Training on several machines with `tf.distribute.MultiWorkerMirroredStrategy` (`--strategy multi-worker`).

Each machine runs the same `edgecls convert` with ``TF_CONFIG`` naming the cluster and its own place in it (the
TensorFlow multi-worker guide). Every worker reads the same dataset folder and trains on its own shard of the
training images (``input_pipeline_id`` of ``num_input_pipelines``), with the gradients summed across the workers each
step, so the weights stay identical everywhere. The validation loss that early stopping watches is summed over every
worker's shard in one collective per epoch, so all of them decide alike. Only the chief (the ``chief`` task, or worker
0 when the cluster has none) exports, verifies, runs the parity gate and writes ``--out``; the others train in a
temporary folder that they remove.

Keras 3's ``Model.fit`` does not run under this strategy (keras-team/keras#20585: its first batch and its logs are
reduced in ways that fail with ``PerReplica ... to a Tensor``), so the epochs run here: Keras's own per-replica
``train_step`` inside ``strategy.run``, the callbacks driven as ``fit`` drives them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, EdgeclsError

from .cache import rows_of
from .choices import STRATEGIES


class TrainingError(EdgeclsError):
    """Distributed training could not go on (a worker stopped or cannot be reached)."""


@dataclass(frozen=True)
class WorkerRole:
    """Where this process sits in the cluster (one worker, the chief, when not distributed)."""

    task_type: str = "worker"
    task_index: int = 0
    num_workers: int = 1
    chief: bool = True

    def describe(self) -> str:
        return f"{self.task_type} {self.task_index} of {self.num_workers} workers"


def make_strategy(name: str) -> Any:
    """The tf.distribute strategy: "multi-worker" reads the cluster from the TF_CONFIG environment variable. Make it
    before any other TensorFlow work: the multi-worker strategy sets up its collectives at program start."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ConfigError(f"strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        cluster_spec()  # a clear error before TensorFlow's own
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"--strategy multi-worker could not start: {exc}; check TF_CONFIG on every worker (see docs/convert.md)"
            ) from None
    return tf.distribute.get_strategy()


_EXAMPLE = (
    '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
    "(index 1 on the second machine)"
)


def cluster_spec() -> dict[str, Any]:
    """TF_CONFIG, checked: a cluster with at least one worker and this task's place in it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(f"--strategy multi-worker needs TF_CONFIG on every worker, e.g. {_EXAMPLE}")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = str(task["type"]), int(task["index"])
        members = cluster[kind]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"TF_CONFIG is not a cluster and a task ({type(exc).__name__}: {exc}); e.g. {_EXAMPLE}"
        ) from None
    if not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG: task {kind} {index} is not in the cluster ({len(members)} {kind} entries)")
    return config


def role(strategy: Any) -> WorkerRole:
    """This process's role: the chief writes the output; the others only train."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return WorkerRole()
    resolver = strategy.cluster_resolver
    kind, index = resolver.task_type or "worker", int(resolver.task_id or 0)
    jobs = resolver.cluster_spec().as_dict()
    workers = sum(len(jobs.get(job, [])) for job in ("chief", "worker"))
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in jobs)
    return WorkerRole(task_type=kind, task_index=index, num_workers=workers, chief=chief)


def is_multi_worker(strategy: Any) -> bool:
    return role(strategy).num_workers > 1


def local_copy(model: Any, scratch: Path) -> Any:
    """The trained model outside the strategy: what follows training (prediction, export, int8 methods) runs on the
    chief alone, and a model made under the multi-worker strategy would wait for the other workers at every call."""
    import keras

    path = scratch / "trained.keras"
    scratch.mkdir(parents=True, exist_ok=True)
    model.save(path)
    try:
        return keras.models.load_model(path, compile=False)
    finally:
        path.unlink(missing_ok=True)


def lost_worker(exc: BaseException) -> TrainingError:
    """A collective that failed because another worker stopped or cannot be reached."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainingError(
        f"multi-worker training stopped: another worker failed or cannot be reached ({first[:200]}); "
        "see that worker's own output, then start every worker again"
    )


def fit(
    model: Any,
    strategy: Any,
    *,
    make_train: Callable[[int, int, int], Any],
    val: tuple[np.ndarray, np.ndarray],
    n_train: int,
    batch_size: int,
    epochs: int,
    callbacks: list[Any],
    sigmoid: bool,
) -> dict[str, list[float]]:
    """``model.fit`` under the multi-worker strategy: ``make_train(shard, shards, per_replica_batch)`` gives one
    input pipeline's endless training batches; ``val`` is the validation split (every worker scores its own part).
    Returns the History dict (loss, accuracy, val_loss, val_accuracy per epoch)."""
    import keras
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"--batch-size {batch_size} must be a multiple of the {replicas} replicas training together "
            "(the global batch is split evenly between them)"
        )
    steps = max(1, n_train // batch_size)
    train_step = _train_step(model, strategy, make_train, batch_size)
    validate = _validator(model, strategy, val, sigmoid)
    try:
        return _epochs(
            model,
            keras.callbacks.CallbackList(
                callbacks, add_history=True, model=model, epochs=epochs, steps=steps, verbose=0
            ),
            epochs=epochs,
            steps=steps,
            train_step=train_step,
            validate=validate,
        )
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
    ) as exc:
        raise lost_worker(exc) from None


def _train_step(
    model: Any, strategy: Any, make_train: Callable[[int, int, int], Any], batch_size: int
) -> Callable[[], dict[str, Any]]:
    """One training step on the next global batch: Keras's own per-replica ``train_step`` on each replica's part of
    it (one input pipeline per worker, from ``make_train``), the logs averaged over the replicas."""
    import tensorflow as tf

    def pipeline(context: Any) -> Any:
        return make_train(
            context.input_pipeline_id, context.num_input_pipelines, context.get_per_replica_batch_size(batch_size)
        )

    batches = iter(strategy.distribute_datasets_from_function(pipeline))

    @tf.function
    def train_step(iterator: Any) -> dict[str, Any]:
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {name: strategy.reduce("MEAN", value, axis=None) for name, value in logs.items()}

    return lambda: train_step(batches)


def _validator(
    model: Any, strategy: Any, val: tuple[np.ndarray, np.ndarray], sigmoid: bool
) -> Callable[[], dict[str, float]]:
    """The validation loss and accuracy over the whole split: each worker scores its own rows, and one collective
    sums every worker's loss, correct count and count, so all of them get the same numbers."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    loss_config = {**model.loss.get_config(), "reduction": None}
    per_example_loss = type(model.loss).from_config(loss_config)
    role_of = role(strategy)
    mine = slice(role_of.task_index, None, role_of.num_workers)
    x_val, y_val = rows_of(val[0], mine), val[1][mine]  # a cached store stays on disk: only this worker's rows

    def local_scores() -> Any:
        loss = correct = 0.0
        for start in range(0, len(x_val), 256):
            x = tf.cast(x_val[start : start + 256], tf.float32)
            y = y_val[start : start + 256]
            pred = model(x, training=False)
            loss += float(tf.reduce_sum(per_example_loss(y, pred)))
            if sigmoid:
                correct += float(np.sum((np.asarray(pred)[:, 0] > 0.5) == (y[:, 0] > 0.5)))
            else:
                correct += float(np.sum(np.argmax(np.asarray(pred), axis=-1) == np.argmax(y, axis=-1)))
        return np.array([loss, correct, len(x_val)], dtype=np.float64)

    def validate() -> dict[str, float]:
        mine = local_scores()  # eager, outside strategy.run: the local copy of the (identical) weights

        def value(context: Any) -> Any:  # one contribution per worker, whatever its number of local replicas
            first = context.replica_id_in_sync_group % max(1, replicas // role_of.num_workers) == 0
            return tf.constant(mine if first else np.zeros_like(mine))

        total = strategy.reduce("SUM", strategy.experimental_distribute_values_from_function(value), axis=None)
        loss, correct, count = (float(v) for v in np.asarray(total))
        return {"val_loss": loss / max(count, 1.0), "val_accuracy": correct / max(count, 1.0)}

    return validate


def _epochs(
    model: Any,
    callback_list: Any,
    *,
    epochs: int,
    steps: int,
    train_step: Callable[[], Any],
    validate: Callable[[], dict[str, float]],
) -> dict[str, list[float]]:
    """The epochs, with the callbacks driven as ``Model.fit`` drives them."""
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            step_logs = train_step()
            logs = {name: float(value) for name, value in step_logs.items()}
            callback_list.on_train_batch_end(step, logs)
        logs = {**logs, **validate()}
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return dict(model.history.history)
