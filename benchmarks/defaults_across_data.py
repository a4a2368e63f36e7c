"""Are the defaults good on data they were not tuned on? The issue's three kinds of data, each run flagless, with the
seed-cnn baseline that every run trains beside it, and with the transfer recipe:

  flowers128   photos, 5 classes, 3,482 images (../shared/data/flowers128)
  digits28     small grayscale images: 10 classes of digits 0-9 drawn here at 28 px, each with its own size,
               stroke, slant, offset and noise (Pillow's bundled font; no download), 1,000 per class by default
  binary       a small binary set of photos, pre-split: 125 training and 40 validation images of each of two
               flowers128 classes (daisy, dandelion), as a user's train/ val/ folders

For each dataset and seed: `edgecls convert DATA --out OUT --seed S` (the flagless run; its report carries the
baseline) and `... --arch mobilenet_v1 --alpha 0.25 --weights <shared weights>` (the transfer recipe). Prints a
table of means over the seeds and writes every run's figures and wall time to --out/results.json.

Run: python benchmarks/defaults_across_data.py [--data flowers128 digits28 binary] [--seeds 0 1 2] [--extra=FLAGS]
                                               [--runs flagless transfer] [--out benchmarks/results/defaults]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v1_0.25_224_no_top.h5"
RUNS = {
    "flagless": [],
    "transfer": ["--arch", "mobilenet_v1", "--alpha", "0.25", "--weights", str(WEIGHTS)],
}
# The flagless run finds the digits' size and colour itself; a MobileNet needs 32 px or more (64 for transfer).
EXTRA = {("digits28", "transfer"): ["--color", "grayscale", "--input-size", "64"]}


def write_digits(out: Path, per_class: int, seed: int = 0) -> Path:
    """10 classes of 28 px grayscale digits, each drawn with its own size, stroke, slant, offset and noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    for digit in range(10):
        folder = out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            canvas = Image.new("L", (56, 56), 0)
            font = ImageFont.load_default(size=rng.randint(26, 40))
            ImageDraw.Draw(canvas).text(
                (28 + rng.uniform(-5, 5), 28 + rng.uniform(-5, 5)),
                str(digit),
                fill=255,
                font=font,
                anchor="mm",
                stroke_width=rng.randint(0, 2),
                stroke_fill=255,
            )
            canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
            canvas = canvas.transform(
                (56, 56), Image.AFFINE, (1, rng.uniform(-0.3, 0.3), 0, 0, 1, 0), resample=Image.BILINEAR
            )
            if rng.random() < 0.5:
                canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
            image = np.asarray(canvas.resize((28, 28), Image.BILINEAR), dtype=np.float32)
            image = np.clip(image + noise.normal(0, rng.uniform(0, 25), image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{digit}_{n:05d}.png")
    return out


def write_binary(out: Path, flowers: Path, train: int = 125, val: int = 40) -> Path:
    """Two flowers128 classes as a user's pre-split train/ val/ folders."""
    for cls in ("daisy", "dandelion"):
        files = sorted((flowers / cls).iterdir())
        random.Random(cls).shuffle(files)
        for split, chosen in (("train", files[:train]), ("val", files[train : train + val])):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, out / split / cls / f.name)
    return out


def dataset(name: str, work: Path, per_class: int) -> Path:
    if name == "flowers128":
        return SHARED / "flowers128"
    target = work / "data" / name
    if not target.is_dir():
        if name == "digits28":
            write_digits(target, per_class)
        else:
            write_binary(target, SHARED / "flowers128")
    return target


def convert(data: Path, out: Path, args: list[str], seed: int) -> dict:
    edgecls = Path(sys.executable).with_name("edgecls")
    cmd = [str(edgecls), "convert", str(data), "--out", str(out), "--overwrite", "--seed", str(seed), *args]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".log").write_text(done.stdout + done.stderr)  # the progress lines, epoch times
    if not (out / "report.json").is_file():
        return {"error": done.stderr[-2000:], "wall_s": round(wall, 1)}
    report = json.loads((out / "report.json").read_text())
    key = "int8" if "int8" in report else "tflite"
    return {
        "float_top1": report["float"]["top1"],
        "int8_top1": report[key]["top1"],
        "baseline_top1": (report.get("baseline") or {}).get("float_top1"),
        "passed": report["passed"],
        "agreement": report["agreement"],
        "recipe": report["settings"].get("recipe"),
        "epochs_run": len((report.get("history") or {}).get("loss", [])),
        "train_s": round(report["timing"]["train_s"], 1),
        "warnings": report.get("warnings", []),
        "wall_s": round(wall, 1),
        "exit_code": done.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["digits28", "binary", "flowers128"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--per-class", type=int, default=1000, help="digits28 images per class")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "defaults")
    parser.add_argument("--extra", default="", help="flags appended to every run, e.g. --extra='--input-size 28'")
    args = parser.parse_args()
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.data:
        data = dataset(name, args.out, args.per_class)
        for run in args.runs:
            for seed in args.seeds:
                key = f"{name}/{run}/seed{seed}"
                results[key] = convert(
                    data,
                    args.out / "runs" / name / run / f"seed{seed}",
                    [*RUNS[run], *EXTRA.get((name, run), []), *args.extra.split()],
                    seed,
                )
                args.out.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(results, indent=2) + "\n")
                print(key, results[key], flush=True)
    print("\n| data | run | int8 top-1 | seed-cnn baseline | wall time | seeds |\n|---|---|---|---|---|---|")
    for name in args.data:
        for run in args.runs:
            rows = [v for k, v in results.items() if k.startswith(f"{name}/{run}/") and "int8_top1" in v]
            if rows:
                mean = lambda field, rows=rows: sum(r[field] for r in rows if r[field] is not None) / len(rows)
                base = [r["baseline_top1"] for r in rows if r["baseline_top1"] is not None]
                print(
                    f"| {name} | {run} | {100 * mean('int8_top1'):.1f}% | "
                    + (f"{100 * sum(base) / len(base):.1f}%" if base else "-")
                    + f" | {mean('wall_s') / 60:.1f} min | {len(rows)} |"
                )


if __name__ == "__main__":
    main()
