"""Converter quality bar on the whole flowers128 set (../shared/data/flowers128, 5 classes, 3,482 photos).

Runs `edgecls convert` as a separate process for each configuration and records its report and cost:
  mobilenet_v1          alpha 0.25 from the shared ImageNet weights        target: >= 80%
  compact-cnn           our edge CNN, distilled from mobilenet_v1         target: int8 top-1 >= 80%
  compact-cnn-alone     the same CNN from the labels alone, for comparison
  mobilenet_v1-random   the same network from random weights             target: transfer >= 10 points above it
  seed-cnn              the tutorial CNN, the baseline
and for every run: int8 vs float drop <= 1.0 point, agreement >= 98%, int8 size <= 0.30x float TFLite;
wall time and peak memory (RSS) of the whole process. compact-cnn learns from the mobilenet_v1 run's float model
(`--teacher`, same split and seed), so that run comes first; a user pays for both, and the note reports both.

Run: python benchmarks/convert_quality.py [--only NAME ...] [--seed N | --seeds N N ...] [--extra "FLAGS"]
                                           [--out benchmarks/results/quality]
(--seed changes the train/val/test split as well as the initialisation: a second seed is a second, independent
measurement on other test images, and compact-cnn then needs the mobilenet_v1 run of the same seed as its teacher.)
--seeds runs every configuration on each split, in OUT/seed<N>/, and prints the mean over the splits: one split's
522 test (or validation) images move by 1-2.5 points from split to split, more than most recipe changes, so compare
recipes by these means. --extra appends convert flags to every run (the last value of a flag wins), for example
--extra="--augment 0.35" (with '=', since the value starts with dashes) to try a change against the same
configurations. The validation accuracy at the epoch that early stopping restored is recorded for that comparison,
because the test split must not choose the recipe. It is optimistic (early stopping chose that epoch on the same
images), and gains of about a point in it have reversed on test four times, so the test means may veto a change.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from edgecls.convert.report import kept_epoch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
FLOWERS = SHARED / "flowers128"
WEIGHTS = SHARED / "weights" / "mobilenet_v1_0.25_224_no_top.h5"
V2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"
# A frozen ImageNet backbone with a new head and no augmentation: the backbone runs once over the images and the
# head trains on its features (edgecls.convert.training.head_on_features), minutes where fine-tuning takes an hour.
FROZEN = [
    "--input-size",
    "160",
    "--epochs",
    "40",
    "--fine-tune-epochs",
    "0",
    "--patience",
    "8",
    "--augment",
    "0",
    "--label-smoothing",
    "0.1",
    "--calibration-samples",
    "500",
    "--int8-method",
    "bias-correction",
]

COMMON = ["--no-baseline"]
COMPACT = [
    "--arch",
    "compact-cnn",
    "--input-size",
    "128",
    "--width",
    "48",
    "--depth",
    "4",
    "--patience",
    "15",
    "--learning-rate",
    "0.002",
    "--augment",
    "1.5",
    "--dropout",
    "0.3",
    "--label-smoothing",
    "0.1",
    "--deterministic",
]
RUNS = {
    # Alpha 0.25 ImageNet features are weak on flowers (a linear probe on them reaches about 67%), so the whole
    # base is fine-tuned after the head, at a tenth of the head's learning rate.
    # 160 px: 80.5% float / 80.1% int8 where 128 px gave 74.5-79.7% (the ImageNet features like larger objects).
    # --int8-method int8-tune: bias correction alone left int8 agreeing with float on 95-96% of the test images.
    # (Augment 1.5, MixUp 0.2 and dropout 0.3 made it smoother, 97.7% int8 agreement, but less accurate: 74.5%.)
    "mobilenet_v1": [
        "--arch",
        "mobilenet_v1",
        "--alpha",
        "0.25",
        "--weights",
        str(WEIGHTS),
        "--input-size",
        "160",
        "--epochs",
        "8",
        "--fine-tune-epochs",
        "40",
        "--fine-tune-layers",
        "100",
        "--patience",
        "10",
        "--learning-rate",
        "0.001",
        "--augment",
        "0.7",
        "--label-smoothing",
        "0.1",
        "--calibration-samples",
        "500",
        "--int8-method",
        "int8-tune",
    ],
    # From scratch, flowers128 overfits (train 90% / val 70% at augment 0.7): stronger augmentation and dropout.
    # (Augment 2.0 with MixUp 0.2 on top went too far: 74.5% against 76.6% at 96 px.) From the labels alone it
    # levels off near 78% (70 or 100 epochs, with or without weight decay); distilled from the MobileNet it goes on.
    "compact-cnn": [*COMPACT, "--teacher", "{out}/mobilenet_v1", "--epochs", "100"],
    "compact-cnn-alone": [*COMPACT, "--epochs", "70"],
    "mobilenet_v1-random": [
        "--arch",
        "mobilenet_v1",
        "--alpha",
        "0.25",
        "--weights",
        "none",
        "--input-size",
        "160",
        "--epochs",
        "38",
        "--fine-tune-epochs",
        "0",
        "--patience",
        "8",
        "--learning-rate",
        "0.003",
    ],
    "seed-cnn": ["--arch", "seed-cnn", "--epochs", "30", "--patience", "6", "--augment", "0"],
    # MobileNetV2 1.0 from the shared ImageNet weights (its alpha read from the file name), frozen, head only
    "mobilenet_v2-frozen": ["--arch", "mobilenet_v2", "--weights", str(V2_WEIGHTS), *FROZEN],
    # the same for the V1 0.25 of the recipe above, to set the two backbones side by side
    "mobilenet_v1-frozen": ["--arch", "mobilenet_v1", "--alpha", "0.25", "--weights", str(WEIGHTS), *FROZEN],
}


def run(name: str, args: list[str], out_root: Path, seed: int = 0, extra: list[str] | None = None) -> dict:
    out = out_root / name
    edgecls = Path(sys.executable).with_name("edgecls")
    args = [a.format(out=out_root) for a in args] + list(extra or [])
    if "--teacher" in args and not Path(args[args.index("--teacher") + 1]).is_dir():
        sys.exit(f"{name} distils from {args[args.index('--teacher') + 1]}: run mobilenet_v1 first (same --out)")
    cmd = [str(edgecls), "convert", str(FLOWERS), "--out", str(out), *COMMON, "--seed", str(seed), *args]
    print("$", " ".join(cmd), flush=True)
    peak_file = out_root / f"{name}.peak"
    # A small wrapper process runs the command, so its peak RSS is the command's own (a child forked straight from
    # this process would count this process's pages until exec).
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[2:]); "
        "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
        "sys.exit(r.returncode)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, str(peak_file), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    peak_mb = int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    (out_root / f"{name}.log").write_text(proc.stdout)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    if not report:
        print(proc.stdout[-3000:])
    latency = None
    if (out / "model.tflite").is_file():  # the int8 model's latency on this CPU, as `edgecls bench` measures it
        bench = subprocess.run(
            [str(edgecls), "bench", str(out / "model.tflite"), "--threads", "2", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if bench.returncode == 0:
            latency = json.loads(bench.stdout)
    return {
        "name": name,
        "seed": seed,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "train_s": report.get("timing", {}).get("train_s"),
        "peak_rss_mb": round(peak_mb, 1),
        "float_top1": report.get("float", {}).get("top1"),
        "int8_top1": report.get("int8", {}).get("top1"),
        "drop_points": report.get("drop_points"),
        "agreement": report.get("agreement"),
        "int8_bytes": report.get("int8_bytes"),
        "float_tflite_bytes": report.get("float_tflite_bytes"),
        "size_ratio": ((report.get("int8_graph_bytes") or report["int8_bytes"]) / report["float_tflite_bytes"])
        if report
        else None,
        "int8_latency": latency,
        "epochs_run": len(report.get("history", {}).get("loss", [])) if report.get("history") else None,
        "val_top1_restored": restored_val_accuracy(report.get("history")),
    }


def restored_val_accuracy(history: dict | None) -> float | None:
    """Validation accuracy at the epoch of lowest validation loss in the last training stage: the weights that
    early stopping restores (each stage keeps its own best, so a head-stage epoch is never the one exported)."""
    if not history or not history.get("val_loss") or not history.get("val_accuracy"):
        return None
    kept = kept_epoch(history)
    if kept:  # recorded by convert since it knew it (reports of older runs lack it)
        return history["val_accuracy"][kept - 1]
    losses, start = history["val_loss"], (history.get("stages") or [{}])[-1].get("start_epoch", 0)
    return history["val_accuracy"][min(range(start, len(losses)), key=losses.__getitem__)]


def means(results: list[dict]) -> list[dict]:
    """Per configuration, the mean of each figure over the seeds whose run produced a report."""
    keys = (
        "float_top1",
        "int8_top1",
        "drop_points",
        "agreement",
        "size_ratio",
        "wall_s",
        "peak_rss_mb",
        "val_top1_restored",
    )
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        done = [r for r in results if r["name"] == name and r["int8_top1"] is not None]
        row: dict = {
            "name": name,
            "seeds": [r["seed"] for r in done],
            "failed_seeds": [r["seed"] for r in results if r["name"] == name and r["int8_top1"] is None],
        }
        for key in keys:
            values = [r[key] for r in done if r.get(key) is not None]
            row[key] = sum(values) / len(values) if values else None
        row["min_agreement"] = min((r["agreement"] for r in done), default=None)
        rows.append(row)
    return rows


def row(label: str, r: dict) -> str:
    if r["int8_top1"] is None:
        failed = f"failed (exit {r['exit_code']})" if "exit_code" in r else "failed"
        return f"| {label} | {failed} | | | | | | | |"
    val = f"{100 * r['val_top1_restored']:.1f}%" if r.get("val_top1_restored") is not None else "-"
    return (
        f"| {label} | {val} | {100 * r['float_top1']:.1f}% | {100 * r['int8_top1']:.1f}% | "
        f"{r['drop_points']:.2f} | {100 * r['agreement']:.1f}% | {r['size_ratio']:.2f} | "
        f"{r['wall_s'] / 60:.1f} min | {r['peak_rss_mb']:.0f} MB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run only these configurations")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, default=0, help="split and initialisation seed (default 0)")
    group.add_argument("--seeds", type=int, nargs="+", help="run on each of these splits and report the means")
    parser.add_argument("--extra", default="", help='convert flags appended to every run: --extra="--augment 0.35"')
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    args = parser.parse_args()
    if not FLOWERS.is_dir():
        sys.exit(f"needs {FLOWERS} (../shared/data)")
    seeds = args.seeds or [args.seed]
    extra = shlex.split(args.extra)
    results = []
    for seed in seeds:
        out_root = args.out / f"seed{seed}" if args.seeds else args.out
        out_root.mkdir(parents=True, exist_ok=True)
        for name in args.only or list(RUNS):
            result = run(name, RUNS[name], out_root, seed, extra)
            result["extra"] = args.extra
            results.append(result)
            print(json.dumps(result), flush=True)
            (out_root / "summary.json").write_text(json.dumps([r for r in results if r["seed"] == seed], indent=2))
    header = (
        "| run | val top-1 (restored epoch) | float top-1 | int8 top-1 | drop (pt) | agreement | "
        "int8 / float size | wall | peak RSS |"
    )
    print("\n" + header)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(row(f"{r['name']} (seed {r['seed']})" if args.seeds else r["name"], r))
    if args.seeds:
        averaged = means(results)
        (args.out / "means.json").write_text(
            json.dumps({"seeds": seeds, "extra": args.extra, "means": averaged}, indent=2)
        )
        for r in averaged:
            label = f"{r['name']}, mean of {len(r['seeds'])} seeds"
            if r["min_agreement"] is not None:
                label += f" (lowest agreement {100 * r['min_agreement']:.1f}%)"
            if r["failed_seeds"]:
                label += f" (failed: {', '.join(map(str, r['failed_seeds']))})"
            print(row(f"**{label}**", r))


if __name__ == "__main__":
    main()
