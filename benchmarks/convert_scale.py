"""The converter at the dataset sizes users bring: peak memory and time of the data stage and of one training epoch,
cold (decoding into the image cache) and warm (reading it), at about 5k, 20k and 80k images.

    python benchmarks/convert_scale.py                     # 5k, 20k, 80k; writes benchmarks/results/convert_scale.json
    python benchmarks/convert_scale.py --sizes 2000 --v2-steps 50    # a quick look

Datasets: the demo generator's five classes at 160 px, saved as JPEG. Rendering 80k images one by one takes an hour
on 2 cores, so each size is made of a pool of rendered images (--pool per class), each file a different random crop
offset of one of them, saved as its own JPEG: every file is decoded for real, as in a user's folder.

Each measurement runs in a fresh Python process and reads its own peak resident memory (VmHWM) after the stage:
- ``data``: `scan` (list, decode into the cache or read it, split) at 96 px;
- ``compact epoch``: compact-cnn at 96 px, one epoch over the training split (the recipe's augmentation on);
- ``v2 frozen``: MobileNetV2 1.0 (the shared ImageNet weights) frozen at 160 px, training the head for
  --v2-steps batches (its memory is flat after a few hundred; its time per image is what an epoch costs);
- ``no cache``: the data stage decoding into memory (what convert did before the cache), at the smaller sizes only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGECLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
V2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"


def make_dataset(root: Path, total: int, *, pool: int, size: int = 160, seed: int = 0) -> Path:
    """``total`` JPEGs in the demo's five class folders (see the module's description); kept between runs."""
    import numpy as np
    from PIL import Image

    from edgecls.live.demo import DEMO_CLASSES, render

    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    per_class = total // len(DEMO_CLASSES)
    for label in DEMO_CLASSES:
        folder = root / label
        folder.mkdir(parents=True)
        sources = [render(label, rng, size=size + 16) for _ in range(pool)]
        for i in range(per_class):
            image = sources[i % pool]
            dy, dx = rng.integers(0, 17, size=2)
            Image.fromarray(image[dy : dy + size, dx : dx + size]).save(folder / f"{label}_{i:06d}.jpg", quality=90)
    done.write_text("ok")
    return root


CHILD = r"""
import json, os, sys, time
from pathlib import Path

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

what, data, cache_dir, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
from edgecls.convert.api import import_tensorflow
from edgecls.convert.cache import ImageCache
from edgecls.convert.data import scan
from edgecls.model.preprocess import PreprocessConfig

size = 160 if what == "v2" else 96
cache = None if what == "nocache" else ImageCache(Path(cache_dir))
t = time.perf_counter()
dataset = scan(data, input_size=(size, size), channels=3, seed=0, cache=cache,
               preprocess=PreprocessConfig(mean=0.0, std=1.0))
result = {"data_s": round(time.perf_counter() - t, 2), "data_peak_mb": round(peak_mb()),
          "cache": dataset.cache.get("all"), "train_images": len(dataset.samples["train"])}
if what in ("compact", "v2"):
    import_tensorflow("convert")
    import keras
    from edgecls.convert.models import create_model
    from edgecls.convert.options import ConvertOptions
    from edgecls.convert.training import TrainConfig, compile_model, input_pipeline, targets

    k = len(dataset.classes)
    if what == "compact":
        opts = ConvertOptions.create("unused", arch="compact-cnn", input_size=96, width=48, dropout=0.3)
        config = TrainConfig(batch_size=32, augment=1.5)
    else:
        opts = ConvertOptions.create("unused", arch="mobilenet_v2", input_size=160, weights=sys.argv[5])
        config = TrainConfig(batch_size=32, augment=0.7)
    model = create_model(opts.arch, opts.model_spec(k))
    compile_model(model, learning_rate=1e-3, sigmoid=False, label_smoothing=0.0, decay_steps=1000)
    ds = input_pipeline(dataset.images["train"], targets(dataset.labels("train"), k, False), config, train=True)
    if steps:
        ds = ds.take(steps)
    t = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    seconds = time.perf_counter() - t
    images = min(len(dataset.samples["train"]), steps * 32) if steps else len(dataset.samples["train"])
    result.update({"epoch_s": round(seconds, 1), "epoch_images": images,
                   "images_per_s": round(images / seconds, 1),
                   "full_epoch_s": round(len(dataset.samples["train"]) / (images / seconds), 1),
                   "epoch_peak_mb": round(peak_mb())})
print("RESULT " + json.dumps(result), flush=True)
"""


def measure(what: str, data: Path, cache: Path, steps: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, what, str(data), str(cache), str(steps), str(V2_WEIGHTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{what} on {data} failed:\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="5000,20000,80000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgecls-convert-scale"))
    parser.add_argument("--pool", type=int, default=400, help="rendered images per class each size is cut from")
    parser.add_argument("--v2-steps", type=int, default=150, help="head-training batches measured for MobileNetV2")
    parser.add_argument("--no-cache-upto", type=int, default=20000, help="measure the uncached data stage up to here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "convert_scale.json")
    args = parser.parse_args()
    rows = []
    for total in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        data = make_dataset(args.work / f"data-{total}", total, pool=args.pool)
        print(f"{total} images ready ({time.perf_counter() - t:.0f} s)", flush=True)
        cache = args.work / f"cache-{total}"
        shutil.rmtree(cache, ignore_errors=True)
        row: dict = {"images": total}
        row["cold"] = measure("compact", data, cache)
        print(total, "compact cold", row["cold"], flush=True)
        row["warm"] = measure("data", data, cache)
        print(total, "data warm", row["warm"], flush=True)
        row["v2"] = measure("v2", data, cache, steps=args.v2_steps)
        print(total, "v2 (cold at 160 px)", row["v2"], flush=True)
        if total <= args.no_cache_upto:
            row["no_cache"] = measure("nocache", data, cache)
            print(total, "no cache", row["no_cache"], flush=True)
        row["cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1024**2)
        rows.append(row)
        shutil.rmtree(cache, ignore_errors=True)
    result = {
        "machine": f"{os.cpu_count()} cores",
        "rows": rows,
        "command": "python benchmarks/convert_scale.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
