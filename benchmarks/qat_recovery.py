"""Quantisation-aware training recovers what post-training int8 loses (issue: edgecls tune and QAT).

A deliberately quantisation-hostile model, honestly built: compact-cnn (uncapped ReLU) is trained on the procedural
demo shapes, then K channels of one activation are scaled up by S while the next depthwise convolution divides them
back. In float the network computes exactly the same function (the script checks it), but int8 quantises each
activation tensor with one scale, so the scaled channels stretch that scale S-fold and every other channel loses
its resolution. Post-training quantisation pays for it; quantisation-aware fine-tuning (edgecls convert --int8-method qat's
path: convert/qat.py) lets the weights adapt to the rounding. As a control, the same model is also fine-tuned for the
same epochs in float and then quantised after training, so the extra epochs alone are not mistaken for QAT's effect.

Run: python benchmarks/qat_recovery.py [--scale 60] [--channels 4] [--qat-epochs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=60.0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    from edgecls.convert import evaluate, qat
    from edgecls.convert.data import scan, stratified_sample
    from edgecls.convert.models import ModelSpec, create_model
    from edgecls.convert.tflite_export import to_tflite
    from edgecls.convert.training import TrainConfig, deterministic, make_strategy, train

    from edgecls.live.demo import write_demo_dataset
    from edgecls.model.preprocess import PreprocessConfig

    deterministic()
    keras.utils.set_random_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="qat_recovery."))
    data_dir = write_demo_dataset(work / "shapes", per_class=args.per_class, size=64, seed=args.seed)
    dataset = scan(
        data_dir,
        input_size=(64, 64),
        channels=3,
        seed=args.seed,
        preprocess=PreprocessConfig(resize="squash", mean=0.0, std=1.0),
    )
    # Uncapped ReLU: scaling a channel by S > 0 then commutes with the activation.
    spec = ModelSpec(num_classes=len(dataset.classes), input_size=64, width=24, depth=3, dropout=0.2, relu_cap=None)
    model = create_model("compact-cnn", spec)
    t0 = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, batch_size=32, learning_rate=3e-3, augment=0.5, patience=6, seed=args.seed)
    train(model, dataset, config, sigmoid=False, checkpoint_dir=work / "ckpt", strategy=make_strategy("default"))
    train_s = time.perf_counter() - t0

    test_x = dataset.images["test"].astype(np.float32)
    test_y = dataset.labels("test")
    before = model.predict(test_x, verbose=0)
    hostile = make_hostile(model, args.scale, args.channels)
    after = model.predict(test_x, verbose=0)
    assert np.abs(before - after).max() < 1e-3, "the hostile rescaling must not change the float model"

    calib = dataset.images["train"][stratified_sample(dataset.labels("train"), 300, args.seed)].astype(np.float32)
    float_top1 = evaluate.topk_accuracy(test_y, after, 1)

    def int8_top1(flat: bytes, name: str) -> float:
        path = work / f"{name}.tflite"
        path.write_bytes(flat)
        probs = evaluate.tflite_probabilities(path, [s.path for s in dataset.samples["test"]])
        return evaluate.topk_accuracy(test_y, probs, 1)

    ptq = int8_top1(to_tflite(model, mode="int8", representative=calib), "ptq")

    # Control: the same extra epochs in float (same optimiser, learning rate and data), then post-training int8.
    from edgecls.convert.training import make_datasets

    control = keras.models.clone_model(model)
    control.set_weights(model.get_weights())
    control.compile(
        optimizer=keras.optimizers.Adam(3e-4), loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"]
    )
    train_ds, val_ds = make_datasets(dataset, TrainConfig(batch_size=32, augment=0.5, seed=args.seed), False)
    control.fit(train_ds, validation_data=val_ds, epochs=args.qat_epochs, verbose=0)
    control_float = evaluate.topk_accuracy(test_y, control.predict(test_x, verbose=0), 1)
    control_ptq = int8_top1(to_tflite(control, mode="int8", representative=calib), "control")
    t1 = time.perf_counter()
    qmodel = qat.qat_model(model, "compact-cnn", spec)

    class Quiet:
        def stage(self, *a: object) -> None: ...

        def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
            print(f"  qat {epoch}/{epochs} val_acc {logs.get('val_accuracy', float('nan')):.3f}", flush=True)

    qat.finetune(
        qmodel,
        dataset,
        epochs=args.qat_epochs,
        learning_rate=3e-4,
        batch_size=32,
        sigmoid=False,
        augment=0.5,
        seed=args.seed,
        observer=Quiet(),
    )
    qat_top1 = int8_top1(qat.to_int8(qmodel, io_type="int8", representative=calib), "qat")
    qat_s = time.perf_counter() - t1
    lost = float_top1 - ptq
    recovered = (qat_top1 - ptq) / lost if lost > 0 else float("nan")
    result = {
        "test_images": len(test_y),
        "hostile": hostile,
        "float_top1": float_top1,
        "ptq_int8_top1": ptq,
        "qat_int8_top1": qat_top1,
        "ptq_drop_points": 100 * (float_top1 - ptq),
        "qat_drop_points": 100 * (float_top1 - qat_top1),
        "recovered_fraction": recovered,
        "control_float_top1_after_extra_epochs": control_float,
        "control_ptq_int8_top1_after_extra_epochs": control_ptq,
        "train_s": round(train_s, 1),
        "qat_s": round(qat_s, 1),
    }
    print(
        f"float {100 * float_top1:.1f}% | post-training int8 {100 * ptq:.1f}% (drop {result['ptq_drop_points']:.1f} pt)"
        f" | QAT int8 {100 * qat_top1:.1f}% (drop {result['qat_drop_points']:.1f} pt) | recovered "
        f"{100 * recovered:.0f}% of the loss | {len(test_y)} test images | QAT {qat_s:.0f} s"
    )
    print(
        f"control, {args.qat_epochs} more float epochs then post-training int8: float {100 * control_float:.1f}%, "
        f"int8 {100 * control_ptq:.1f}% (drop {100 * (control_float - control_ptq):.1f} pt)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def make_hostile(model, scale: float, channels: int) -> dict:  # type: ignore[no-untyped-def]
    """Scale ``channels`` output channels of the first pointwise block's BatchNorm by ``scale`` and divide the next
    depthwise kernel by it: the float function is unchanged, the int8 activation range is not."""
    bn = model.get_layer("s0b1_pw_bn")
    dw = model.get_layer("s1b0_dw")
    gamma, beta, mean, var = bn.get_weights()
    picked = list(range(channels))
    gamma, beta = gamma.copy(), beta.copy()
    gamma[picked] *= scale
    beta[picked] *= scale
    bn.set_weights([gamma, beta, mean, var])
    kernel = dw.get_weights()
    kernel[0] = kernel[0].copy()
    kernel[0][:, :, picked, :] /= scale
    dw.set_weights(kernel)
    return {"layer": bn.name, "next": dw.name, "channels": picked, "scale": scale}


if __name__ == "__main__":
    sys.exit(main())
