from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_classify_folder_example(coral, tmp_path):
    for name in ("cat.bmp", "hot_dog.jpg"):
        shutil.copy(coral / name, tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "classify_folder.py"),
            str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1  Egyptian cat" in proc.stdout and "1  hotdog, hot dog, red hot" in proc.stdout
    assert "skipped:" in proc.stderr and "broken.jpg" in proc.stderr


def test_robot_loop_example_reacts_to_decided_labels(coral):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "robot_loop.py"),
            str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "--source",
            "demo",
            "--seconds",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "classified " in proc.stdout and "final behaviour: cruise" in proc.stdout  # ImageNet has no 'circle'


def test_pi_live_example_runs_on_the_demo_source(coral):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pi_live.py"),
            str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "--source",
            "demo",
            "--max-frames",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "20 frames" in proc.stderr


def test_pi_live_example_with_a_profile(coral):
    model = str(coral / "mobilenet_v2_1.0_224_quant.tflite")
    # the rpi4-coral-usb profile asks for the Edge TPU; with no libedgetpu that is an error, never a silent CPU run
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pi_live.py"),
            model,
            "--profile",
            "rpi4-coral-usb",
            "--source",
            "demo",
            "--max-frames",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EDGECLS_EDGETPU_LIBRARY": "/nonexistent.so"},
        check=False,
    )
    assert proc.returncode == 1 and "libedgetpu1-std" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pi_live.py"),
            model,
            "--profile",
            "linux-usb-camera",
            "--source",
            "demo",
            "--max-frames",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 frames" in proc.stderr


def test_pi_live_example_explains_a_missing_picamera2(coral):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pi_live.py"), str(coral / "mobilenet_v2_1.0_224_quant.tflite")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1 and "python3-picamera2" in proc.stderr and "Traceback" not in proc.stderr


def test_ros2_node_example_is_valid_python_using_rclpy_documented_calls():
    import ast

    source = (ROOT / "examples" / "ros2_node.py").read_text()
    tree = ast.parse(source)
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"declare_parameter", "create_publisher", "create_timer", "spin", "init", "destroy_node"} <= calls
