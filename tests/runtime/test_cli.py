"""The CLI through Typer's CliRunner, and the installed console script for the no-traceback promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgecls.cli.app import app

runner = CliRunner()
MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def test_info_human_and_json(coral):
    result = run("info", coral / MODEL)
    assert result.exit_code == 0, result.output
    assert "[1, 224, 224, 3] uint8" in result.output and "1001 from TFLite metadata" in result.output
    assert "CONV_2D x36" in result.output
    facts = json.loads(run("info", coral / MODEL, "--json").stdout)
    assert facts["input"]["quantization"] == {"scale": 0.0078125, "zero_point": 128}
    assert facts["labels"]["count"] == 1001 and facts["ops"]["DEPTHWISE_CONV_2D"] == 17
    assert facts["size_bytes"] == (coral / MODEL).stat().st_size
    assert facts["backend"]["name"] in ("ai_edge_litert", "tflite_runtime", "tensorflow")


def test_classify_json_lines_directory_and_glob(coral, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("cat.bmp", "hot_dog.jpg"):
        shutil.copy(coral / name, images / name)
    result = run("classify", coral / MODEL, images, str(coral / "drag*.bmp"), "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.path.basename(r["path"]) for r in records] == ["cat.bmp", "hot_dog.jpg", "dragonfly.bmp"]
    assert records[0]["predictions"][0] == {
        "index": 286,
        "label": "Egyptian cat",
        "score": pytest.approx(0.84, abs=0.1),
    }
    assert all(len(r["predictions"]) == 2 and r["latency_ms"] > 0 for r in records)


def test_classify_goes_on_past_a_bad_image_and_exits_non_zero(coral, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = run("classify", coral / MODEL, bad, coral / "cat.bmp", "--threshold", "0.5")
    assert result.exit_code == 1
    assert "error: " in result.stderr and "broken.jpg" in result.stderr and "1 of 2 images failed" in result.stderr
    assert "cat.bmp: Egyptian cat (0.8" in result.stdout
    assert "tabby" not in result.stdout  # below the threshold
    json_result = run("classify", coral / MODEL, bad, coral / "cat.bmp", "--json")
    lines = [json.loads(line) for line in json_result.stdout.splitlines()]
    assert "error" in lines[0] and lines[1]["predictions"][0]["index"] == 286


def test_labels_option_overrides_the_model(coral, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"L{i}" for i in range(1001)))
    result = run("classify", coral / MODEL, coral / "cat.bmp", "--labels", labels, "--top-k", "1")
    assert result.exit_code == 0 and "L286" in result.stdout


@pytest.mark.parametrize(
    "model, args, message",
    [
        ("missing.tflite", [], "model file not found"),
        ("cat.bmp", [], "not a TFLite model"),
        ("model_invoking_error.tflite", [], "model_invoking_error.tflite"),
        ("mobilenet_v1_0.25_128_quant_edgetpu.tflite", [], "compiled for the Edge TPU"),
        ("mobilenet_v1_0.25_128_quant_edgetpu.tflite", ["--delegate", "edgetpu"], "libedgetpu"),
    ],
)
def test_errors_are_one_line(coral, model, args, message):
    result = run("classify", coral / model, coral / "cat.bmp", *args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_label_mismatch_and_no_images(coral, tmp_path):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    result = run("classify", coral / MODEL, coral / "cat.bmp", "--labels", labels)
    assert result.exit_code == 1 and "3 entries but the model has 1001 classes" in result.stderr
    result = run("classify", coral / MODEL, str(tmp_path / "nothing_here"))
    assert result.exit_code == 1 and "not found" in result.stderr


@pytest.mark.parametrize("case", ["truncated", "invoking_error", "ok"])
def test_console_script_stderr_is_one_line_or_nothing(coral, tmp_path, case):
    """The real process, fd 2 included: one error line, no traceback, no native runtime chatter."""
    model = {"invoking_error": coral / "model_invoking_error.tflite", "ok": coral / MODEL}.get(case)
    if case == "truncated":
        model = tmp_path / "cut.tflite"
        model.write_bytes((coral / MODEL).read_bytes()[:50000])
    proc = subprocess.run(
        [sys.executable, "-m", "edgecls", "classify", str(model), str(coral / "cat.bmp")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if case == "ok":
        assert proc.returncode == 0 and proc.stderr == "" and "Egyptian cat" in proc.stdout
        return
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and model.name in lines[0], proc.stderr


def test_grayscale_png_and_rgba_files_classify(coral, tmp_path):
    rgb = np.asarray(Image.open(coral / "cat.bmp").convert("RGB"))
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "cat.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    result = run("classify", coral / MODEL, tmp_path, "--json", "--top-k", "3")
    assert result.exit_code == 0
    records = {os.path.basename(r["path"]): r for r in map(json.loads, result.stdout.splitlines())}
    assert 286 in [p["index"] for p in records["cat.png"]["predictions"]]
    assert len(records["gray.png"]["predictions"]) == 3


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("edgecls ")


# -- what `info` says about labels -----------------------------------------------------------------------------------


def test_info_ends_the_label_list_with_dots_only_where_more_follow(coral):
    from edgecls.cli.app import _format_info

    facts = json.loads(run("info", coral / MODEL, "--json").stdout)
    shown = run("info", coral / MODEL).stdout
    assert "labels    1001 from TFLite metadata (imagenet_labels.txt): background, tench, " in shown
    assert next(line for line in shown.splitlines() if line.startswith("labels")).endswith(", ...")
    facts["labels"] = {"count": 3, "source": "labels.txt", "first": ["cat", "dog", "owl"]}  # a complete list
    line = next(line for line in _format_info(facts).splitlines() if line.startswith("labels"))
    assert line == "labels    3 from labels.txt: cat, dog, owl"


def test_info_of_a_three_class_model_lists_its_labels_without_dots(built_models, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    result = run("info", built_models["float_rgb_softmax"], "--labels", labels)
    assert result.exit_code == 0, result.output
    assert f"labels    3 from {labels}: red, green, blue\n" in result.stdout


# -- the Python API is as quiet as the command line ------------------------------------------------------------------


def test_the_python_api_prints_nothing_of_its_own_on_fd_2(coral):
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to fd 2 when an interpreter is built;
    the command line held it back, the Python API printed it. Now neither does, and it is there at debug level."""
    code = (
        "import logging, sys, edgecls\n"
        "if sys.argv[2] == 'debug': logging.basicConfig(level=logging.DEBUG, format='%(name)s: %(message)s')\n"
        "clf = edgecls.Classifier(sys.argv[1])\n"
        "print(clf.classify(sys.argv[3])[0].label)\n"
    )
    for level in ("quiet", "debug"):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(coral / MODEL), level, str(coral / "cat.bmp")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0 and proc.stdout == "Egyptian cat\n", proc.stderr
        noise = [line for line in proc.stderr.splitlines() if "XNNPACK" in line]
        if level == "quiet":
            assert proc.stderr == ""
        else:
            assert noise and all(line.startswith("edgecls.nativelog: native: INFO: ") for line in noise), proc.stderr


def test_held_back_native_output_keeps_every_line_that_is_not_routine():
    """What a native library writes to fd 2 inside the block: the routine line goes, any other is printed after it
    (a real error is never hidden), in order, from whichever thread wrote it."""
    code = (
        "import os, threading\n"
        "from edgecls.nativelog import quiet_native_stderr\n"
        "with quiet_native_stderr():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'ERROR: a real problem\\n')\n"
        "    t = threading.Thread(target=os.write, args=(2, b'from a thread\\n')); t.start(); t.join()\n"
        "os.write(2, b'after\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "ERROR: a real problem\nfrom a thread\nafter\n", proc.stderr


def test_native_blocks_in_two_threads_at_once_give_fd_2_back(tmp_path):
    """fd 2 is one per process: two threads holding back native output at the same time must not restore each
    other's temporary file (stderr would be lost for good)."""
    code = (
        "import os, threading, time\n"
        "from edgecls.nativelog import quiet_native_stderr\n"
        "def work(n):\n"
        "    for i in range(50):\n"
        "        with quiet_native_stderr():\n"
        "            os.write(2, f'{n}\\n'.encode()); time.sleep(0.0005)\n"
        "threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "os.write(2, b'still here\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 0 and lines[-1] == "still here", proc.stderr[-500:]
    assert sorted(lines[:-1]) == sorted(str(n) for n in range(4) for _ in range(50))


# -- Ctrl-C: while starting, and when the caller ignores it -----------------------------------------------------------


def _wait_for_the_command_line_to_import(pid: int, timeout: float = 10.0) -> None:
    """Until the process maps an interpreter extension that Python's own start-up and ``import edgecls`` do not load
    (the command line's modules are being imported): a fixed delay lands in CPython's start-up on a loaded machine."""
    import time
    from pathlib import Path

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return
        if any("lib-dynload/" in line and "_typing." not in line for line in maps.splitlines()):
            return
        time.sleep(0.001)


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.1, 0.2, 0.4])
def test_ctrl_c_while_starting_is_exit_130_with_one_line(coral, delay):
    """SIGINT while the command line is still importing or loading the model: exit 130 and one line, or a clean stop
    when it was already running (Python's own start-up, before edgecls runs, is beyond any program's reach). The
    child gets SIGINT as a terminal gives it, however the suite was started (children.py)."""
    import signal
    import time

    from children import edgecls, end

    proc = edgecls("run", coral / MODEL, "--source", "demo", "-q")
    try:
        _wait_for_the_command_line_to_import(proc.pid)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        end(proc)
    assert "Traceback" not in stderr, stderr
    if proc.returncode == 0:  # it was already running: the signal stopped the stream as it should
        assert "stopped by SIGINT" in stderr
    else:
        assert proc.returncode == 130 and stderr.strip().splitlines() == ["error: interrupted"], stderr


def test_a_run_started_with_sigint_and_sighup_ignored_keeps_them_ignored(coral, tmp_path):
    """`nohup edgecls run ... &` in a script: SIGINT (a background job of a non-interactive shell) and SIGHUP (nohup)
    come ignored. Neither a Ctrl-C while starting, nor one while running, nor a hang-up stops the run (docs/device.md:
    an ignored signal stays ignored); SIGTERM does, cleanly. Before, the SIGINT during start-up was lost and edgecls
    then installed its own handler, so a later SIGINT stopped a run its caller had shielded from Ctrl-C."""
    import signal

    from children import NOHUP_BACKGROUND_JOB, edgecls, end, wait_for_lines

    out = tmp_path / "results.jsonl"
    proc = edgecls(
        "run", coral / MODEL, "--source", "demo", "-q", "--sink", f"jsonl:{out}", signals=NOHUP_BACKGROUND_JOB
    )
    try:
        _wait_for_the_command_line_to_import(proc.pid)
        proc.send_signal(signal.SIGINT)  # while it starts
        made = wait_for_lines(out, 3, proc)
        proc.send_signal(signal.SIGINT)  # while it runs
        proc.send_signal(signal.SIGHUP)
        wait_for_lines(out, made + 10, proc)  # it went on
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        end(proc)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert "interrupted" not in stderr and "stopped by SIGTERM" in stderr.strip().splitlines()[-1]
    assert stderr.strip().splitlines()[-1].startswith(f"done: {len(out.read_text().splitlines())} frames")
