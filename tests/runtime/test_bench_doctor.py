"""`edgecls bench` (JSON fields, percentiles, the budget exit code) and `edgecls doctor` (this machine, and a
prepared /sys, /dev and /proc tree with a Coral accelerator, a camera and a Raspberry Pi)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BACKEND

from edgecls import Classifier
from edgecls.device.bench import benchmark
from edgecls.device.doctor import diagnose


def edgecls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecls", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_benchmark_splits_and_percentiles(coral):
    with Classifier(coral / "mobilenet_v1_0.25_128_quant.tflite", num_threads=1, backend=BACKEND) as clf:
        result = benchmark(clf, runs=40, warmup=3)
    data = result.to_dict()
    parts = data["latency_ms"]
    for part in ("preprocess", "invoke", "postprocess", "total"):
        s = parts[part]
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], part
    total_mean = sum(parts[p]["mean"] for p in ("preprocess", "invoke", "postprocess"))
    assert abs(total_mean - parts["total"]["mean"]) < 0.01
    assert data["throughput_fps"] == pytest.approx(1000 / parts["total"]["mean"], rel=0.01)
    assert data["runs"] == 40 and data["warmup"] == 3 and data["frame"] == {"width": 640, "height": 480}
    assert data["backend"]["num_threads"] == 1 and data["delegate"] is None
    assert data["machine"]["cpu_count"] == os.cpu_count()
    assert data["within_budget"] is None


def test_bench_cli_json_and_budget(coral):
    model = str(coral / "mobilenet_v1_0.25_128_quant.tflite")
    ok = edgecls("bench", model, "--runs", "20", "--warmup", "2", "--budget-ms", "10000", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["budget_ms"] == 10000 and data["within_budget"] is True
    over = edgecls(
        "bench", model, "--runs", "20", "--warmup", "0", "--budget-ms", "0.0001", "--image", str(coral / "cat.bmp")
    )
    assert over.returncode == 3  # a verdict, apart from errors (1)
    assert "p90 latency" in over.stderr and "over the budget of 0.0001 ms" in over.stderr
    assert "invoke" in over.stdout and "throughput" in over.stdout


def by_check(findings):  # type: ignore[no-untyped-def]
    result: dict[str, list] = {}
    for f in findings:
        result.setdefault(f.check, []).append(f)
    return result


def usb_devices() -> list[Path]:
    folder = Path("/sys/bus/usb/devices")
    return sorted(folder.iterdir()) if folder.is_dir() else []


def pci_devices() -> list[Path]:
    folder = Path("/sys/bus/pci/devices")
    return sorted(folder.iterdir()) if folder.is_dir() else []


def ids(device: Path, *names: str) -> tuple[str, ...]:
    try:
        return tuple((device / name).read_text().strip() for name in names)
    except OSError:
        return ()


def test_doctor_on_this_machine():
    findings = by_check(diagnose())
    assert findings["python"][0].status == "ok"
    assert findings["backend ai_edge_litert"][0].status == "ok"
    assert findings["interpreter"][0].status == "ok"
    try:
        import ctypes

        ctypes.CDLL("libedgetpu.so.1")
        has_runtime = True
    except OSError:
        has_runtime = False
    lib = findings["libedgetpu"][0]
    assert (lib.status == "ok") == has_runtime
    if not has_runtime:
        assert lib.status == "warn" and "libedgetpu1-std" in lib.fix
    cameras = list(Path("/dev").glob("video*"))
    if not cameras:
        assert findings["camera"][0].status == "info" and "no camera device" in findings["camera"][0].detail
    coral_usb = [d for d in usb_devices() if ids(d, "idVendor", "idProduct") in {("18d1", "9302"), ("1a6e", "089a")}]
    coral_pci = [d for d in pci_devices() if ids(d, "vendor", "device") == ("0x1ac1", "0x089a")]
    assert len(findings.get("edgetpu usb", [])) == len(coral_usb)
    if not coral_usb and not coral_pci and not list(Path("/dev").glob("apex_*")):
        assert findings["edgetpu"][0].detail.startswith("no Edge TPU found"), findings
    result = edgecls("doctor", "--json")
    assert result.returncode == 0, result.stdout
    listed = json.loads(result.stdout)
    assert {f["check"] for f in listed} >= {"python", "interpreter", "libedgetpu", "camera"}
    text = edgecls("doctor").stdout
    shown = [line.split(" fix: ", 1)[1] for line in text.splitlines() if " fix: " in line]
    assert shown == [f["fix"] for f in listed if f.get("fix")]  # the text shows each finding's fix, and no other
    if not has_runtime:
        assert lib.fix in shown


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_doctor_reads_devices_from_a_prepared_tree(tmp_path):
    root = tmp_path
    write(root / "proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    write(root / "sys/bus/usb/devices/2-1/idVendor", "18d1\n")
    write(root / "sys/bus/usb/devices/2-1/idProduct", "9302\n")
    write(root / "sys/bus/usb/devices/2-1/speed", "480\n")  # on a USB 2 port
    write(root / "sys/bus/pci/devices/0000:01:00.0/vendor", "0x1ac1\n")
    write(root / "sys/bus/pci/devices/0000:01:00.0/device", "0x089a\n")
    write(root / "dev/video0", "")
    write(root / "sys/class/video4linux/video0/name", "unicam-image\n")
    findings = by_check(diagnose(root))
    usb = findings["edgetpu usb"][0]
    assert usb.status == "warn" and "480 Mb/s" in usb.detail and "USB 3" in usb.fix
    pci = findings["edgetpu pci"]
    assert any(f.status == "ok" and "PCI 0000:01:00.0" in f.detail for f in pci)
    missing_driver = [f for f in pci if f.status == "fail"]
    assert missing_driver and "gasket-dkms" in missing_driver[0].fix
    cam = findings["camera"][0]
    assert str(root / "dev/video0") in cam.detail and "unicam-image" in cam.detail
    pic = findings["picamera2"][0]
    try:
        import picamera2  # noqa: F401
    except ImportError:
        assert pic.status == "fail" and "Raspberry Pi 4" in pic.detail and "python3-picamera2" in pic.fix
    write(root / "dev/apex_0", "")
    assert not [f for f in by_check(diagnose(root))["edgetpu pci"] if f.status == "fail"]
