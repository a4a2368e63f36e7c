"""`edgecls deploy` bundles: their contents, the systemd unit (systemd-analyze verify where available) and the
install script (bash -n, and a --dry-run that prints every step)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgecls.deploy import build_bundle, bundle_contents
from edgecls.errors import ConfigError
from edgecls.profiles import load_profile


def edgecls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecls", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def pair(coral: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(coral / "mobilenet_v1_0.5_160_quant.tflite", folder / "net.tflite")
    shutil.copy(coral / "mobilenet_v1_0.5_160_quant_edgetpu.tflite", folder / "net_edgetpu.tflite")
    return folder / "net.tflite"


def extract(bundle: Path, into: Path) -> Path:
    with tarfile.open(bundle, "r:gz") as tar:
        tar.extractall(into, filter="data")
    (root,) = [p for p in into.iterdir() if p.is_dir()]
    return root


def test_edgetpu_bundle_contents(pair, tmp_path):
    out = tmp_path / "rpi4.tar.gz"
    bundle = build_bundle(pair, load_profile("rpi4-coral-usb"), out, sinks=["mqtt://broker/edge"])
    assert bundle.warnings == ()
    root = extract(out, tmp_path / "x")
    assert root.name == "edgecls-rpi4-coral-usb"
    names = {p.name for p in root.iterdir()}
    assert names == {"model.tflite", "model_edgetpu.tflite", "labels.txt", "profile.toml", "config.txt.fragment",
                     "edgecls.service", "install.sh", "README.txt", "bundle.json"}
    assert (root / "model.tflite").read_bytes() == pair.read_bytes()
    assert (root / "model_edgetpu.tflite").read_bytes() == pair.with_name("net_edgetpu.tflite").read_bytes()
    labels = (root / "labels.txt").read_text().splitlines()
    assert len(labels) == 1001 and labels[0] == "background"
    assert (root / "profile.toml").read_text() == load_profile("rpi4-coral-usb").to_toml()
    assert "dtoverlay=vc4-kms-v3d" in (root / "config.txt.fragment").read_text()
    meta = json.loads((root / "bundle.json").read_text())
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    unit = (root / "edgecls.service").read_text()
    assert "Restart=on-failure" in unit and "WantedBy=multi-user.target" in unit and "User=edgecls" in unit
    assert ("ExecStart=/opt/edgecls/venv/bin/edgecls run /opt/edgecls/model.tflite --profile /opt/edgecls/profile.toml"
            in unit)
    assert "--sink mqtt://broker/edge --quiet" in unit
    assert os.access(root / "install.sh", os.X_OK)
    assert bundle_contents(out)["bundle"]["profile"] == "rpi4-coral-usb"


def test_install_script_syntax_and_dry_run(pair, tmp_path):
    out = tmp_path / "b.tar.gz"
    build_bundle(pair, load_profile("rpi5-coral-pcie"), out)
    root = extract(out, tmp_path / "x")
    script = root / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    dry = subprocess.run(["bash", str(script), "--dry-run", "--no-start"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout
    assert "+ python3 -m venv --system-site-packages /opt/edgecls/venv" in steps  # picamera2 comes from the OS
    assert "+ /opt/edgecls/venv/bin/pip install --upgrade edgecls[camera]==" in steps
    assert f"+ install -m 644 {root}/model_edgetpu.tflite /opt/edgecls/model_edgetpu.tflite" in steps
    assert "+ install -m 644 " + str(root / "edgecls.service") + " /etc/systemd/system/edgecls.service" in steps
    assert "+ systemctl enable edgecls.service" in steps and "--now" not in steps
    assert "usermod -aG apex edgecls" in steps  # the PCIe Edge TPU's device node group
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_systemd_unit_verifies(pair, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not available on this machine")
    prefix = tmp_path / "opt" / "edgecls"
    (prefix / "venv" / "bin").mkdir(parents=True)
    # verify checks that ExecStart's program exists: point the prefix at this environment's edgecls
    (prefix / "venv" / "bin" / "edgecls").symlink_to(Path(sys.executable).with_name("edgecls"))
    out = tmp_path / "b.tar.gz"
    build_bundle(pair, load_profile("rpi5"), out, prefix=str(prefix), user="root", sinks=["jsonl:/var/log/x 1.jsonl"])
    root = extract(out, tmp_path / "x")
    result = subprocess.run([analyze, "verify", str(root / "edgecls.service")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"jsonl:/var/log/x 1.jsonl"' in (root / "edgecls.service").read_text()  # quoted for systemd
    broken = root / "broken.service"
    broken.write_text((root / "edgecls.service").read_text().replace(f"ExecStart={prefix}", "ExecStart=relative"))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True).returncode != 0


def test_cpu_profile_leaves_the_edgetpu_build_out(pair, tmp_path):
    bundle = build_bundle(pair, load_profile("rpi5"), tmp_path / "b.tar.gz")
    assert "model_edgetpu.tflite" not in bundle.files
    assert any("left out" in w for w in bundle.warnings)


def test_edgetpu_profile_without_a_compiled_model_warns(coral, tmp_path):
    bundle = build_bundle(coral / "mobilenet_v2_1.0_224_quant.tflite", load_profile("rpi4-coral-usb"), tmp_path / "b.tgz")
    assert any("no Edge TPU build" in w for w in bundle.warnings)


def test_deploy_errors(coral, pair, tmp_path):
    only = tmp_path / "only_edgetpu.tflite"
    shutil.copy(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", only)
    with pytest.raises(ConfigError, match="only runs on the Edge TPU"):
        build_bundle(only, load_profile("rpi5"), tmp_path / "a.tar.gz")
    # given the Edge TPU build, its CPU model beside it goes in too
    given = build_bundle(pair.with_name("net_edgetpu.tflite"), load_profile("rpi4-coral-usb"), tmp_path / "c.tar.gz")
    assert {"model.tflite", "model_edgetpu.tflite"} <= set(given.files)
    with pytest.raises(ConfigError, match=r"\.tar\.gz"):
        build_bundle(pair, load_profile("rpi5"), tmp_path / "bundle.zip")
    with pytest.raises(ConfigError, match="absolute path"):
        build_bundle(pair, load_profile("rpi5"), tmp_path / "a.tar.gz", prefix="opt/edgecls")
    result = edgecls("deploy", str(pair), "--profile", "rpi9", "--out", str(tmp_path / "a.tar.gz"))
    assert result.returncode == 1 and result.stderr.startswith("error: no profile named 'rpi9'")
    assert not (tmp_path / "a.tar.gz").exists()


def test_deploy_cli(pair, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    result = edgecls("deploy", str(pair), "--profile", "rpi4-coral-usb", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "sudo ./install.sh" in result.stdout and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
