"""The int8 export methods side by side, on a model `edgecls convert` already trained: rounding to nearest
("plain"), bias correction (convert/biascorrect.py, the default) and int8 tuning (convert/int8tune.py, --int8-method int8-tune).

Takes a convert output folder (model.keras and report.json) and the dataset it was trained on, rebuilds the same
split, calibration set and tuning images from the report's settings, exports int8 each way and evaluates every
export on the held-out split through the edgecls runtime, as convert's parity gate does.

Run: python benchmarks/int8_methods.py OUT_DIR DATA_DIR [--tune-epochs 16] [--no-tune] [--json result.json]
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
    parser.add_argument("run", type=Path, help="an edgecls convert output folder")
    parser.add_argument("data", type=Path, help="the dataset it was trained on")
    parser.add_argument("--tune-epochs", type=int, default=16)
    parser.add_argument("--no-tune", action="store_true", help="skip int8 tuning (minutes on a MobileNet)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from edgecls.convert import evaluate, int8tune
    from edgecls.convert.data import scan, stratified_sample
    from edgecls.convert.tflite_export import to_tflite

    from edgecls.model.preprocess import PreprocessConfig

    report = json.loads((args.run / "report.json").read_text())
    settings = report["settings"]
    size = int(report["model"]["input_size"])
    channels = 1 if settings["color"] == "grayscale" else 3
    dataset = scan(
        args.data,
        input_size=(size, size),
        channels=channels,
        seed=settings["train.seed"],
        split=tuple(settings["split"]),
        preprocess=PreprocessConfig(resize=settings["resize"], mean=0.0, std=1.0),
    )
    model = keras.models.load_model(args.run / "model.keras", compile=False)
    calib = dataset.images["train"][
        stratified_sample(dataset.labels("train"), settings["calibration_samples"], settings["train.seed"])
    ].astype(np.float32)
    labels = np.array([s.label for s in dataset.samples["test"]])
    paths = [s.path for s in dataset.samples["test"]]
    sigmoid = model.output_shape[-1] == 1  # the seed-cnn's binary head
    float_probs = evaluate.float_probabilities(model, dataset.images["test"].astype(np.float32), sigmoid=sigmoid)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("plain", "bias_corrected") + (() if args.no_tune else ("int8_tuned",)):
            t0 = time.perf_counter()
            if name == "int8_tuned":
                images = int8tune.tuning_images(
                    dataset.images["train"], dataset.labels("train"), settings["train.seed"]
                )  # as convert --int8-method int8-tune draws them
                flat, _ = int8tune.export_tuned(
                    model, calib, images, io_type=settings["io"], epochs=args.tune_epochs, seed=settings["train.seed"]
                )
            else:
                flat = to_tflite(
                    model,
                    mode="int8",
                    io_type=settings["io"],
                    representative=calib,
                    bias_correction=name == "bias_corrected",
                )
            seconds = time.perf_counter() - t0
            path = Path(tmp) / f"{name}.tflite"
            path.write_bytes(flat)
            metrics = evaluate.compare(
                labels, float_probs, evaluate.tflite_probabilities(path, paths), list(dataset.classes)
            )
            rows[name] = {
                "int8_top1": metrics["int8"]["top1"],
                "drop_points": metrics["drop_points"],
                "agreement": metrics["agreement"],
                "export_s": round(seconds, 1),
            }
    result = {
        "run": str(args.run),
        "arch": settings["arch"],
        "float_top1": metrics["float"]["top1"],
        "test_images": len(labels),
        **rows,
    }
    print(json.dumps(result, indent=2))
    print(f"\nfloat {100 * result['float_top1']:.1f}%")
    for name, r in rows.items():
        print(
            f"{name:15s} int8 {100 * r['int8_top1']:.1f}%  drop {r['drop_points']:.2f} pt  "
            f"agreement {100 * r['agreement']:.1f}%  export {r['export_s']} s"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
