"""Runtime speed and memory (issue: foundation and device runtime).

Measures, on mobilenet_v2_1.0_224_quant from ../shared/data/coral with 2 threads and a 640x480 RGB frame in memory:
  * a bare interpreter.invoke() on an already-filled tensor (the runtime's own cost);
  * the smallest possible Python pipeline (OpenCV resize straight into the tensor, invoke, argmax): the floor;
  * edgecls Classifier.classify(frame);
  * the usual example loop (PIL resize, expand_dims, set_tensor, invoke, argsort);
interleaved round-robin so drift hits all of them alike; then `import edgecls`, `edgecls classify MODEL IMAGE` from
process start, and the peak RSS of that command.

CLI start-up (``--only cli`` measures just this): time from process start to result and peak RSS, each process's own
(wait4), of ``edgecls classify MODEL IMAGE``, ``edgecls info MODEL`` and ``edgecls --help``, against the bare
baseline: a ``python -c`` that loads the model with ai_edge_litert, invokes it once and prints the top class. Then one
``python -X importtime -m edgecls classify ...``: import time per top-level package, which says where the difference
goes.

Run: python benchmarks/runtime_speed.py [--rounds 400] [--json benchmarks/results/runtime_speed.json] [--only cli]
[--against REF] (with --only, the other sections already in the JSON file are kept; --against REF also runs the
commands of that git ref and of this tree, both from their edgecls/ folder, in the same rounds: a before and after
on a busy machine)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORAL = ROOT.parent / "shared" / "data" / "coral"
MODEL = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
IMAGE = CORAL / "cat.bmp"


def loop_timings(rounds: int, threads: int) -> dict[str, float]:
    import cv2
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from edgecls import Classifier

    frame = np.asarray(Image.open(IMAGE).convert("RGB").resize((640, 480)))
    clf = Classifier(MODEL, num_threads=threads)

    bare = Interpreter(model_path=str(MODEL), num_threads=threads)
    bare.allocate_tensors()
    in_index = bare.get_input_details()[0]["index"]
    out_index = bare.get_output_details()[0]["index"]
    bare.set_tensor(in_index, clf.preprocessor.to_array(frame)[None])
    tensor = bare.tensor(in_index)

    def invoke() -> None:
        bare.invoke()

    def floor() -> None:
        view = tensor()[0]
        cv2.resize(frame, (224, 224), dst=view, interpolation=cv2.INTER_LINEAR)
        del view
        bare.invoke()
        int(bare.get_tensor(out_index).argmax())

    def classify() -> None:
        clf.classify(frame, top_k=5)

    def example_loop() -> None:
        img = Image.fromarray(frame).resize((224, 224))
        bare.set_tensor(in_index, np.expand_dims(np.asarray(img), 0))
        bare.invoke()
        np.argsort(bare.get_tensor(out_index)[0])[::-1][:5]

    cases = {"invoke": invoke, "floor": floor, "classify": classify, "example_loop": example_loop}
    # "blocked": each case back to back, as a bare invoke loop runs (weights stay warm in the caches);
    # "interleaved": round-robin, as in an application that does other work between frames.
    blocked: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(3):
        for name, fn in cases.items():
            for _ in range(20):
                fn()
            for _ in range(rounds // 3):
                t0 = time.perf_counter()
                fn()
                blocked[name].append(time.perf_counter() - t0)
    interleaved: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            interleaved[name].append(time.perf_counter() - t0)
    return {
        "blocked": {name: statistics.median(v) * 1e3 for name, v in blocked.items()},
        "interleaved": {name: statistics.median(v) * 1e3 for name, v in interleaved.items()},
    }


def process_timings(runs: int) -> dict[str, float]:
    python = sys.executable
    edgecls_bin = Path(python).with_name("edgecls")
    imports, commands, rss = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "import edgecls"], check=True)
        imports.append(time.perf_counter() - t0)
    baseline = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t0)
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(
            [str(edgecls_bin), "classify", str(MODEL), str(IMAGE), "--top-k", "1"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        commands.append(time.perf_counter() - t0)
        rss.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    return {
        "python_startup_s": statistics.median(baseline),
        "import_edgecls_s": statistics.median(imports),
        "classify_cli_s": statistics.median(commands),
        "classify_cli_peak_rss_mb": max(rss) / 1024,
    }


BARE = (
    "from ai_edge_litert.interpreter import Interpreter\n"
    "interpreter = Interpreter(model_path={model!r})\n"
    "interpreter.allocate_tensors()\n"
    "interpreter.invoke()\n"
    "print(int(interpreter.get_tensor(interpreter.get_output_details()[0]['index']).argmax()))\n"
)


def measured_run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds from start to exit, peak RSS in MB) of one process; its own rusage, not the largest child's so far."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def import_breakdown(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Import time (ms) per top-level package, from ``python -X importtime``: each module's own time, summed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    per_root: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:") :].split("|"))
        root = name.split(".")[0]
        per_root[root] = per_root.get(root, 0.0) + int(self_us) / 1e3
    return dict(sorted(((k, round(v, 1)) for k, v in per_root.items() if v >= 1.0), key=lambda kv: -kv[1]))


CLI_ARGS = {"classify": ["classify", str(MODEL), str(IMAGE)], "info": ["info", str(MODEL)], "help": ["--help"]}
# The console script's entry point, run from the edgecls/ of another tree (before the editable install's finder)
FROM_TREE = "import sys; sys.path.insert(0, {tree!r}); sys.argv = ['edgecls', *{args!r}]; " + (
    "from edgecls.__main__ import console; console()"
)


def checkout(ref: str, into: Path) -> Path:
    """The tree of git ``ref`` in ``into``, laid out as installed (convert/ and firmware_configs/ inside edgecls/)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name in ("convert", "firmware_configs"):
        (into / "edgecls" / name).symlink_to(into / name)
    return into


def cli_startup(runs: int, against: str | None = None) -> dict[str, object]:
    """Start-up cost of the command line against the bare interpreter (see the module's docstring); with
    ``against`` (a git ref), the same commands from that tree too, in the same rounds, as ``<name>@<ref>``.

    Compiled modules are cached (in a folder of their own, whatever PYTHONDONTWRITEBYTECODE says here), as on an
    installed device, and one unmeasured round fills that cache first."""
    python = sys.executable
    edgecls_bin = str(Path(python).with_name("edgecls"))
    commands = {"bare_invoke": [python, "-c", BARE.format(model=str(MODEL))]}
    commands |= {name: [edgecls_bin, *args] for name, args in CLI_ARGS.items()}
    scratch = tempfile.TemporaryDirectory(prefix="edgecls-before-")
    if against:
        tree = checkout(against, Path(scratch.name))
        for name, args in CLI_ARGS.items():
            commands[f"{name}@{against}"] = [python, "-c", FROM_TREE.format(tree=str(tree), args=args)]
            commands[f"{name}@this tree"] = [python, "-c", FROM_TREE.format(tree=str(ROOT), args=args)]
    with tempfile.TemporaryDirectory(prefix="edgecls-pycache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env |= {"PYTHONPYCACHEPREFIX": cache, "COLUMNS": "120"}  # COLUMNS: the help's layout is the same for all
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for round_ in range(runs + 1):  # round-robin: a busy moment of the machine hits every command alike
            for name, cmd in commands.items():
                sample = measured_run(cmd, env)
                if round_:
                    samples[name].append(sample)
        imports = import_breakdown([python, "-X", "importtime", "-m", "edgecls", *commands["classify"][1:]], env)
    scratch.cleanup()
    result: dict[str, object] = {
        name: {
            "median_s": round(statistics.median(t for t, _ in runs_), 4),
            # a busy machine only ever adds time: the fastest run is the steadiest figure there
            "min_s": round(min(t for t, _ in runs_), 4),
            "peak_rss_mb": round(max(r for _, r in runs_), 1),
        }
        for name, runs_ in samples.items()
    }
    return {**result, "runs": runs, "classify_imports_ms": imports}


def print_cli_startup(figures: dict[str, object]) -> None:
    bare = figures["bare_invoke"]
    print(f"cli start-up over {figures['runs']} runs: time to result (median, fastest), peak RSS of the process")
    for name, f in figures.items():
        if not isinstance(f, dict) or "median_s" not in f:
            continue
        print(
            f"  {name:24s} {f['median_s'] * 1e3:5.0f} ms {f['min_s'] * 1e3:5.0f} ms {f['peak_rss_mb']:5.1f} MB"
            f"   against bare: {(f['median_s'] - bare['median_s']) * 1e3:+4.0f} ms"
            f" {(f['min_s'] - bare['min_s']) * 1e3:+4.0f} ms {f['peak_rss_mb'] - bare['peak_rss_mb']:+5.1f} MB"
        )
    print(
        "  classify's imports (ms, own time per package): "
        + ", ".join(f"{k} {v:.0f}" for k, v in list(figures["classify_imports_ms"].items())[:10])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="process start-up repetitions")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", choices=["cli"], help="measure only this section (cli: command-line start-up)")
    parser.add_argument("--against", metavar="REF", help="cli start-up: also measure the commands of this git ref")
    args = parser.parse_args()
    if not MODEL.exists():
        sys.exit(f"needs {MODEL} (../shared/data)")
    if args.only == "cli":
        cli = cli_startup(args.runs, args.against)
        print_cli_startup(cli)
        if args.json:
            kept = json.loads(args.json.read_text()) if args.json.exists() else {}
            kept["cli_startup"] = cli
            args.json.write_text(json.dumps(kept, indent=2) + "\n")
        return
    # Process figures first, while this process is small: a forked child's peak RSS counts the parent's pages
    # until exec, so measuring after loading models here would inflate the command's figure.
    proc = process_timings(args.runs)
    cli = cli_startup(args.runs, args.against)
    loop = loop_timings(args.rounds, args.threads)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "threads": args.threads,
        "median_ms": loop,
        "ratio_to_invoke": {mode: {k: v / times["invoke"] for k, v in times.items()} for mode, times in loop.items()},
        **proc,
        "cli_startup": cli,
    }
    print(f"median per frame (ms), {args.threads} threads, 640x480 RGB frame -> {MODEL.name}")
    for mode, times in loop.items():
        print(f"  {mode}:")
        for name, ms in times.items():
            print(f"    {name:13s} {ms:7.3f} ms   {ms / times['invoke']:.3f}x invoke")
        print(f"    classify is {times['example_loop'] / times['classify']:.2f}x faster than the example loop")
    print(f"python start-up          {proc['python_startup_s'] * 1e3:6.0f} ms")
    print(f"import edgecls           {proc['import_edgecls_s'] * 1e3:6.0f} ms (process incl. start-up)")
    print(f"edgecls classify (CLI)   {proc['classify_cli_s'] * 1e3:6.0f} ms from process start to result")
    print(f"peak RSS of that command {proc['classify_cli_peak_rss_mb']:6.1f} MB")
    print_cli_startup(cli)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
