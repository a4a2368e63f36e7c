"""`edgecls deploy` bundles: their contents, the systemd unit (systemd-analyze verify where available), the install
script (bash -n and shellcheck on the package's file and on a rendered one, a --dry-run that prints every step, and
its checks), and that no value given to deploy can inject a line into the unit or a command into install.sh.
tests/runtime/test_emulated_pi.py installs a bundle on an emulated Raspberry Pi OS and runs its service."""

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

from edgecls.device.deploy import build_bundle, bundle_contents
from edgecls.device.profiles import load_profile
from edgecls.device.wheels import build_wheel
from edgecls.errors import ConfigError


def edgecls(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecls", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edgecls wheel of this checkout, built once (pip wheel in a copy of the sources)."""
    return build_wheel(cache=tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def bundle(wheel):  # type: ignore[no-untyped-def]
    """build_bundle with this session's wheel."""

    def make(model, profile, out, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("wheel", None if "pip_spec" in kwargs else wheel)
        return build_bundle(model, load_profile(profile) if isinstance(profile, str) else profile, out, **kwargs)

    return make


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


def test_edgetpu_bundle_contents(pair, tmp_path, bundle, wheel):
    out = tmp_path / "rpi4.tar.gz"
    made = bundle(pair, "rpi4-coral-usb", out, sinks=["mqtt://broker/edge"])
    assert made.warnings == ()
    root = extract(out, tmp_path / "x")
    assert root.name == "edgecls-rpi4-coral-usb"
    names = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert names == {
        "model.tflite",
        "model_edgetpu.tflite",
        "labels.txt",
        "profile.toml",
        "config.txt.fragment",
        "edgecls_bootconfig.py",
        "edgecls.service",
        "install.sh",
        "README.txt",
        "bundle.json",
        "SHA256SUMS",
        f"wheels/{wheel.name}",
    }
    assert (root / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    sums = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=root, capture_output=True, text=True, check=False
    )
    assert sums.returncode == 0 and sums.stdout.count(": OK") == len(names) - 1, sums.stdout
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
    assert "WorkingDirectory=/var/lib/edgecls" in unit and "StateDirectory=edgecls" in unit
    assert (
        "ExecStart=/opt/edgecls/venv/bin/edgecls run /opt/edgecls/model.tflite --profile /opt/edgecls/profile.toml"
        in unit
    )
    assert "--sink mqtt://broker/edge --quiet" in unit
    assert os.access(root / "install.sh", os.X_OK)
    assert bundle_contents(out)["bundle"]["profile"] == "rpi4-coral-usb"


def test_install_script_syntax_and_dry_run(pair, tmp_path, bundle, wheel):
    out = tmp_path / "b.tar.gz"
    bundle(pair, "rpi5-coral-pcie", out)
    root = extract(out, tmp_path / "x")
    script = root / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    dry = subprocess.run(
        ["bash", str(script), "--dry-run", "--no-start"], capture_output=True, text=True, timeout=60, check=False
    )
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout
    assert "+ python3 -m venv --system-site-packages /opt/edgecls/venv" in steps  # picamera2 comes from the OS
    # the bundled wheel, not a name on PyPI
    assert f"--find-links {root}/wheels {root}/wheels/{wheel.name}[camera]" in steps
    assert "install.sh: numpy: " in steps  # it says what it chose
    assert "+ install -d -m 750 -o edgecls -g edgecls /var/lib/edgecls" in steps  # the service's own folder
    assert f"+ install -m 644 {root}/model_edgetpu.tflite /opt/edgecls/model_edgetpu.tflite" in steps
    assert "+ install -m 644 " + str(root / "edgecls.service") + " /etc/systemd/system/edgecls.service" in steps
    assert "+ systemctl enable edgecls.service" in steps and "--now" not in steps
    assert "usermod -aG apex edgecls" in steps  # the PCIe Edge TPU's device node group
    # it ends saying that nothing was changed (it used to end "installed and enabled")
    assert (
        steps.splitlines()[-1] == "install.sh: dry run: nothing was changed (the + lines are the steps it would take)"
    )
    assert "installed and" not in steps
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_systemd_unit_verifies(pair, tmp_path, bundle):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not available on this machine")
    prefix = tmp_path / "opt" / "edgecls"
    (prefix / "venv" / "bin").mkdir(parents=True)
    # verify checks that ExecStart's program exists: point the prefix at this environment's edgecls
    (prefix / "venv" / "bin" / "edgecls").symlink_to(Path(sys.executable).with_name("edgecls"))
    out = tmp_path / "b.tar.gz"
    bundle(pair, "rpi5", out, prefix=str(prefix), user="nobody", sinks=["jsonl:/var/log/x 1.jsonl"])
    root = extract(out, tmp_path / "x")
    result = subprocess.run(
        [analyze, "verify", str(root / "edgecls.service")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert '"jsonl:/var/log/x 1.jsonl"' in (root / "edgecls.service").read_text()  # quoted for systemd
    broken = root / "broken.service"
    broken.write_text((root / "edgecls.service").read_text().replace(f"ExecStart={prefix}", "ExecStart=relative"))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True, check=False).returncode != 0


def test_cpu_profile_leaves_the_edgetpu_build_out(pair, tmp_path, bundle):
    made = bundle(pair, "rpi5", tmp_path / "b.tar.gz")
    assert "model_edgetpu.tflite" not in made.files
    assert any("left out" in w for w in made.warnings)


def test_edgetpu_profile_without_a_compiled_model_warns(coral, tmp_path, bundle):
    made = bundle(coral / "mobilenet_v2_1.0_224_quant.tflite", "rpi4-coral-usb", tmp_path / "b.tgz")
    assert any("no Edge TPU build" in w for w in made.warnings)


def test_deploy_errors(coral, pair, tmp_path, bundle):
    only = tmp_path / "only_edgetpu.tflite"
    shutil.copy(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", only)
    with pytest.raises(ConfigError, match="only runs on the Edge TPU"):
        bundle(only, "rpi5", tmp_path / "a.tar.gz")
    # given the Edge TPU build, its CPU model beside it goes in too
    given = bundle(pair.with_name("net_edgetpu.tflite"), "rpi4-coral-usb", tmp_path / "c.tar.gz")
    assert {"model.tflite", "model_edgetpu.tflite"} <= set(given.files)
    with pytest.raises(ConfigError, match=r"\.tar\.gz"):
        bundle(pair, "rpi5", tmp_path / "bundle.zip")
    with pytest.raises(ConfigError, match="absolute path"):
        bundle(pair, "rpi5", tmp_path / "a.tar.gz", prefix="opt/edgecls")
    with pytest.raises(ConfigError, match="unknown sink 'garbage'"):  # refused here, not at the device's boot
        bundle(pair, "rpi5", tmp_path / "a.tar.gz", sinks=["garbage"])
    with pytest.raises(ConfigError, match="expected an edgecls wheel"):
        bundle(pair, "rpi5", tmp_path / "a.tar.gz", wheel=pair)
    result = edgecls("deploy", str(pair), "--profile", "rpi9", "--out", str(tmp_path / "a.tar.gz"))
    assert result.returncode == 1 and result.stderr.startswith("error: no profile named 'rpi9'")
    assert not (tmp_path / "a.tar.gz").exists()


def test_deploy_cli(pair, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    # builds the wheel from this checkout (into the cache named by XDG_CACHE_HOME)
    result = edgecls(
        "deploy",
        str(pair),
        "--profile",
        "rpi4-coral-usb",
        "--out",
        str(out),
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert any(n.endswith("-py3-none-any.whl") for n in bundle_contents(out)["names"])
    assert "sudo ./install.sh" in result.stdout and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_mqtt_discovery_needs_an_mqtt_sink_in_the_bundle(pair, tmp_path, bundle):
    """The service's own run of --mqtt-discovery is checked on the emulated Pi (tests/emulated_pi.py)."""
    with pytest.raises(ConfigError, match="--mqtt-discovery announces an MQTT sink to Home Assistant"):
        bundle(pair, "rpi5", tmp_path / "b.tar.gz", sinks=["jsonl:r.jsonl"], extra_args=["--mqtt-discovery"])
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("sinks", ["jsonl:/tmp/x\nExecStartPre=/bin/touch /tmp/pwned"], "control characters"),
        ("user", "edgecls\nExecStartPre=/bin/sh", "not a valid system user name"),
        ("user", "root", "its own unprivileged user"),
        ("prefix", "/opt/edgecls\nExecStartPre=/bin/sh", "use letters, digits"),
        ("prefix", "/opt/../etc", "no '..'"),
        ("prefix", "/opt/edge cls", "use letters, digits"),
        ("prefix", "/usr", "is a system folder"),
        ("pip_spec", "edgecls\n; touch /tmp/pwned", "control characters"),
        ("pip_spec", "--index-url=http://evil/ edgecls", "not an option"),
    ],
)
def test_values_that_would_inject_into_the_unit_or_install_script_are_refused(
    pair, tmp_path, bundle, option, value, message
):
    with pytest.raises(ConfigError, match=message):
        bundle(pair, "rpi5", tmp_path / "b.tar.gz", **{option: value})
    assert not (tmp_path / "b.tar.gz").exists()


def test_a_profile_description_with_a_newline_is_refused(pair, tmp_path):
    bad = tmp_path / "board.toml"
    bad.write_text(
        load_profile("rpi5").to_toml().replace('description = "', 'description = "x\\nExecStartPre=/bin/sh ', 1)
    )
    result = edgecls("deploy", str(pair), "--profile", str(bad), "--out", str(tmp_path / "b.tar.gz"))
    assert result.returncode == 1 and "description must be a non-empty string on one line" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "b.tar.gz").exists()


def test_shell_text_in_values_is_never_run(pair, tmp_path, bundle):
    """--pip-spec, a sink and EDGECLS_PIP_SPEC holding $(...) reach install.sh as data: a dry run (and the unit)
    keep them literal and run nothing."""
    canary = tmp_path / "pwned"
    spec = f"x}}$(touch {canary})"
    bundle(pair, "rpi5", tmp_path / "b.tar.gz", pip_spec=spec, sinks=[f"jsonl:/tmp/$(touch {canary}).jsonl"])
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    dry = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert (
        f"pip install --upgrade --disable-pip-version-check --constraint /opt/edgecls/constraints.txt {spec}"
        in (dry.stdout)
        or f"--disable-pip-version-check {spec}" in dry.stdout
    )
    for how in (["--pip-spec", f"$(touch {canary})"], []):
        env = {**os.environ, "EDGECLS_PIP_SPEC": f"`touch {canary}`"}
        again = subprocess.run(
            ["bash", str(root / "install.sh"), "--dry-run", *how],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert again.returncode == 0, again.stderr
    assert not canary.exists()
    unit = (root / "edgecls.service").read_text()
    assert f'"jsonl:/tmp/$$(touch {canary}).jsonl"' in unit  # systemd would not expand it either


def test_the_mqtt_password_stays_out_of_the_bundle(pair, tmp_path, bundle):
    secret = "hunter2-s3cret"
    made = bundle(pair, "rpi5", tmp_path / "b.tar.gz", sinks=[f"mqtt://pi:{secret}@broker.local/robot/vision"])
    assert any("mqtt://pi:***@broker.local/robot/vision" in w and "--mqtt-password-file" in w for w in made.warnings)
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    for path in root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    unit = (root / "edgecls.service").read_text()
    assert "--sink mqtt://pi@broker.local/robot/vision" in unit and "EnvironmentFile=-/etc/edgecls/edgecls.env" in unit
    dry = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"], capture_output=True, text=True, timeout=60, check=False
    )
    assert "names a user but no password was given" in dry.stderr
    secret_file = tmp_path / "pw"
    secret_file.write_text(secret + "\n")
    dry = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run", "--mqtt-password-file", str(secret_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0 and "+ write /etc/edgecls/edgecls.env (root only, mode 0600)" in dry.stdout
    assert secret not in dry.stdout + dry.stderr


def fake_bin(folder: Path, name: str, script: str) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n" + script)
    (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("name", "script", "message"),
    [
        ("uname", "echo armv7l\n", "32-bit ARM system (armv7l)"),
        ("uname", "echo riscv64\n", "riscv64 is not supported"),
        (
            "python3",
            'case "$*" in *ensurepip*) exit 1;; esac\nexec "$REAL_PYTHON" "$@"\n',
            "apt-get install python3-venv",
        ),
        ("python3", 'case "$*" in *version_info*) exit 1;; esac\nexec "$REAL_PYTHON" "$@"\n', "needs Python >= 3.10"),
    ],
)
def test_install_checks_the_system_before_it_changes_anything(pair, tmp_path, bundle, name, script, message):
    bundle(pair, "rpi5", tmp_path / "b.tar.gz")
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    env = fake_bin(tmp_path / "bin", name, script)
    env["REAL_PYTHON"] = shutil.which("python3") or sys.executable
    done = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "+ " not in done.stdout  # no step was even planned


def test_a_damaged_bundle_is_refused(pair, tmp_path, bundle):
    bundle(pair, "rpi5", tmp_path / "b.tar.gz")
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    with open(root / "model.tflite", "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xff")
    done = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "do not match SHA256SUMS" in done.stderr and "+ " not in done.stdout


def test_uninstall_dry_run(pair, tmp_path, bundle):
    bundle(pair, "rpi5", tmp_path / "b.tar.gz")
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    done = subprocess.run(
        ["bash", str(root / "install.sh"), "--uninstall", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "+ rm -f /etc/systemd/system/edgecls.service" in done.stdout and "+ rm -rf /opt/edgecls" in done.stdout
    assert "+ pip" not in done.stdout and "uninstalled" not in done.stdout
    assert (
        done.stdout.splitlines()[-1]
        == "install.sh: dry run: nothing was changed (the + lines are the steps it would take)"
    )
    assert "mqtt-clear" not in done.stdout  # no MQTT sink: nothing retained to clear


# -- the Pi camera's system package: only where there is one -------------------------------------------------------


def test_picamera2_is_planned_on_a_pi_and_not_on_x86_64(pair, tmp_path, bundle):
    """rpi5 uses the Pi camera: on 64-bit ARM the dry run plans apt-get install python3-picamera2 (Raspberry Pi
    OS has it); on x86-64 Debian, which has no such package, it says why it leaves it out instead of planning an
    apt-get that would fail."""
    bundle(pair, "rpi5", tmp_path / "b.tar.gz")
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    real_python = shutil.which("python3") or sys.executable
    no_picamera = 'case "$*" in *picamera2*) exit 1;; esac\nexec "$REAL_PYTHON" "$@"\n'
    plans = {}
    for arch in ("aarch64", "x86_64"):
        folder = tmp_path / f"bin-{arch}"
        env = fake_bin(folder, "uname", f"echo {arch}\n")
        env = {**env, **fake_bin(folder, "python3", no_picamera), "REAL_PYTHON": real_python}
        done = subprocess.run(
            ["bash", str(root / "install.sh"), "--dry-run"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        plans[arch] = done
    assert "+ apt-get install -y python3-picamera2" in plans["aarch64"].stdout
    assert "apt-get" not in plans["x86_64"].stdout
    assert "uses the Raspberry Pi camera (picamera2), which exists on a Raspberry Pi only; this is x86_64" in (
        plans["x86_64"].stderr
    )
    if os.uname().machine == "x86_64":  # and with this machine's own uname
        done = subprocess.run(
            ["bash", str(root / "install.sh"), "--dry-run"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **fake_bin(tmp_path / "bin-real", "python3", no_picamera), "REAL_PYTHON": real_python},
            check=False,
        )
        assert done.returncode == 0 and "python3-picamera2 is not installed" in done.stderr, done.stderr
        assert "apt-get" not in done.stdout


def test_a_usb_camera_profile_plans_no_picamera2(pair, tmp_path, bundle):
    bundle(pair, "linux-usb-camera", tmp_path / "b.tar.gz")
    root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
    env = fake_bin(tmp_path / "bin", "uname", "echo aarch64\n")
    done = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "picamera2" not in done.stdout + done.stderr


# -- MQTT topics and Home Assistant in the bundle ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ("mqtt://broker/t%00x", "holds a NUL character"),
        ("mqtt://broker/t%0Ax", "holds a control character"),
        ("mqtt://broker/t%FF", "not valid UTF-8"),
        ("mqtt://broker/t/+", "wildcards"),
        ("mqtt://broker/" + "x" * 65529, "too long"),
        ("mqtt://broker//t", "the topic starts with '/'"),
    ],
)
def test_deploy_refuses_a_topic_no_broker_takes(pair, tmp_path, bundle, sink, message):
    """The service would start a client that never delivers: refused on the workstation, with the check `run` uses."""
    with pytest.raises(ConfigError, match=message):
        bundle(pair, "rpi5", tmp_path / "b.tar.gz", sinks=[sink])
    assert not (tmp_path / "b.tar.gz").exists()


def test_deploy_cli_refuses_a_bad_topic_in_one_line(pair, tmp_path):
    result = edgecls(
        "deploy",
        str(pair),
        "--profile",
        "rpi5",
        "--out",
        str(tmp_path / "b.tar.gz"),
        "--sink",
        "mqtt://pi:hunter2@broker/robot%00vision",
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: MQTT topic 'robot\\x00vision' holds a NUL character")
    assert "hunter2" not in result.stderr and not (tmp_path / "b.tar.gz").exists()


def test_discovery_options_reach_the_unit_and_the_uninstall(pair, tmp_path, bundle):
    from edgecls.sinks.hass import Discovery

    made = bundle(
        pair,
        "rpi5",
        tmp_path / "b.tar.gz",
        sinks=["mqtt://pi:pw@broker.local/%2Fhome/cam"],
        discovery=Discovery(prefix="ha", node_id="porch"),
    )
    root = extract(made.path, tmp_path / "x")
    unit = (root / "edgecls.service").read_text()
    # a meant leading '/' (%2F) stays one: systemd's % is doubled, as systemd unquotes it
    assert (
        '--sink "mqtt://pi@broker.local/%%2Fhome/cam" --quiet --stats-every 60 --mqtt-discovery '
        "--mqtt-discovery-prefix ha --mqtt-discovery-node-id porch"
    ) in unit
    dry = subprocess.run(
        ["bash", str(root / "install.sh"), "--uninstall", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert (
        "+ /opt/edgecls/venv/bin/edgecls mqtt-clear --sink mqtt://pi@broker.local/%2Fhome/cam --mqtt-discovery "
        "--mqtt-discovery-prefix ha --mqtt-discovery-node-id porch --timeout 5"
    ) in dry.stdout
    assert "pw" not in (root / "install.sh").read_text().replace("pwd", "")
    result = edgecls(
        "deploy",
        str(pair),
        "--profile",
        "rpi5",
        "--out",
        str(tmp_path / "c.tar.gz"),
        "--sink",
        "mqtt://broker/cam",
        "--mqtt-discovery-node-id",
        "porch",
        "--wheel",
        str(made.path),
    )
    assert result.returncode == 1 and "add --mqtt-discovery" in result.stderr and "Traceback" not in result.stderr


# -- install.sh --uninstall clears what the service left retained, on a real broker ------------------------------------


def retained_on(port: int, user: str, password: str) -> set[str]:
    """The topics on which a new subscriber gets a retained message (every topic but $SYS)."""
    import time

    import paho.mqtt.client as mqtt

    topics: set[str] = set()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set(user, password)
    client.on_message = lambda c, u, m: topics.add(m.topic) if m.retain else None
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        time.sleep(1.0)
    finally:
        client.loop_stop()
        client.disconnect()
    return topics


def installed_for_uninstall(tmp_path: Path, prefix: Path) -> dict[str, str]:
    """What `install.sh --uninstall` needs to run for real here without touching this machine: the prefix holds
    a venv whose edgecls is this checkout's, and rm, rmdir, userdel, systemctl and id are stand-ins that log the
    step (id says root, and that the service user does not exist). Returns the environment to run it in."""
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "edgecls").symlink_to(Path(sys.executable).with_name("edgecls"))
    for name in ("rm", "rmdir", "userdel", "systemctl"):
        fake_bin(tmp_path / "bin", name, f'echo "{name} $*" >> {tmp_path / "steps.log"}\n')
    env = fake_bin(tmp_path / "bin", "id", 'case "$1" in -u) echo 0;; *) exit 1;; esac\n')
    env.pop("EDGECLS_MQTT_PASSWORD", None)
    return env


def test_uninstall_clears_the_retained_status_and_discovery_configs(
    pair, tmp_path, bundle, monkeypatch, coral, mosquitto
):
    """The service ran with --mqtt-discovery against a broker that wants a password. `install.sh --uninstall`, run
    for real (with stand-ins for the steps that would change this machine), takes its status and its Home
    Assistant configs off the broker, with the installed edgecls and the password from the root-only
    EnvironmentFile as install.sh writes it. A second uninstall, with the broker down, warns, names the command to
    run later, and goes on. (``mosquitto``: the broker's skip rules; this test starts one that wants a password.)"""
    from conftest import Mosquitto

    from edgecls.device import installer

    secret = 's3cret$`"\\pw'
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", users={"pi": secret}).start()
    try:
        url = f"mqtt://pi@127.0.0.1:{broker.port}/robot/vision"
        ran = edgecls(
            "run",
            str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "--source",
            str(coral / "cat.bmp"),
            "-q",
            "--sink",
            url,
            "--mqtt-discovery",
            env={"EDGECLS_MQTT_PASSWORD": secret},
        )
        assert ran.returncode == 0, ran.stderr
        assert retained_on(broker.port, "pi", secret) == {
            "homeassistant/sensor/edgecls_robot_vision/label/config",
            "homeassistant/binary_sensor/edgecls_robot_vision/online/config",
            "robot/vision/status",
        }

        env_file = tmp_path / "etc" / "edgecls.env"  # the test's own, in place of /etc/edgecls/edgecls.env
        env_file.parent.mkdir()
        escaped = secret.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
        env_file.write_text(f'EDGECLS_MQTT_PASSWORD="{escaped}"\n')  # as install.sh writes it
        env_file.chmod(0o600)
        monkeypatch.setattr(installer, "ENV_FILE", str(env_file))
        prefix = tmp_path / "opt" / "edgecls"
        bundle(
            pair,
            "linux-usb-camera",
            tmp_path / "b.tar.gz",
            prefix=str(prefix),
            sinks=[url],
            extra_args=["--mqtt-discovery"],
        )
        root = extract(tmp_path / "b.tar.gz", tmp_path / "x")
        assert "\nBOOT_FILE=''\n" in (root / "install.sh").read_text()  # this machine's boot files stay out of it
        env = installed_for_uninstall(tmp_path, prefix)

        done = subprocess.run(
            ["bash", str(root / "install.sh"), "--uninstall"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "cleared 3 retained topic(s) on 127.0.0.1" in done.stdout and "warning" not in done.stderr, done.stderr
        assert done.stdout.splitlines()[-1].startswith("install.sh: uninstalled;")
        assert secret not in done.stdout + done.stderr
        assert retained_on(broker.port, "pi", secret) == set()
        steps = (tmp_path / "steps.log").read_text()
        assert f"rm -f {env_file}" in steps and f"rm -rf {prefix}" in steps  # after the clearing, which needed both

        broker.stop()
        again = subprocess.run(
            ["bash", str(root / "install.sh"), "--uninstall"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"error: could not connect to MQTT broker 127.0.0.1:{broker.port}" in again.stderr
        assert (
            "warning: the service's retained MQTT messages" in again.stderr and "the uninstall goes on" in again.stderr
        )
        assert f"edgecls mqtt-clear --sink {url} --mqtt-discovery --timeout 5" in again.stderr
        assert again.stdout.splitlines()[-1].startswith("install.sh: uninstalled;")
        assert (tmp_path / "steps.log").read_text().count("rm -rf") == 2  # the rest of the uninstall went on
    finally:
        broker.stop()


# -- deploy's wheel cache: unusable is a warning, never a traceback ------------------------------------------------


def test_deploy_with_an_unusable_wheel_cache_builds_in_a_temporary_folder(pair, tmp_path):
    """XDG_CACHE_HOME naming a file, and (without it) a home folder that cannot be written: deploy builds the wheel
    in a temporary folder, says so in one warning line, and writes the bundle (it was a NotADirectoryError
    traceback)."""
    a_file = tmp_path / "cache-is-a-file"
    a_file.write_text("")
    unwritable = "/proc/1/edgecls-home"  # nobody, root included, can make a folder in /proc
    for env, cache in (
        ({"XDG_CACHE_HOME": str(a_file)}, f"{a_file}/edgecls/wheels"),
        ({"XDG_CACHE_HOME": "", "HOME": unwritable}, f"{unwritable}/.cache/edgecls/wheels"),
    ):
        out = tmp_path / "bundle.tar.gz"
        result = edgecls("deploy", str(pair), "--profile", "rpi5", "--out", str(out), env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "wheel cache" in line]
        assert len(warnings) == 1 and warnings[0].startswith(f"warning: the wheel cache {cache}/"), result.stderr
        assert "built in a temporary folder" in warnings[0]
        assert any(n.endswith("-py3-none-any.whl") for n in bundle_contents(out)["names"])
        out.unlink()
    with pytest.raises(ConfigError, match="cannot be used .*set XDG_CACHE_HOME to a writable folder"):
        build_wheel(cache=a_file / "wheels")  # the library call without a fallback: one clear error


# -- the device scripts: files of the package, rendered from validated values only ------------------------------------

SCRIPTS = Path(__file__).resolve().parents[2] / "edgecls" / "device" / "scripts"


def test_the_install_script_passes_bash_n_and_shellcheck_as_a_file_and_rendered(pair, tmp_path, bundle):
    """The template itself (the real file in the package) and a bundle's install.sh with every list filled (boot
    lines, MQTT uninstall arguments, files): `bash -n` always, shellcheck where it is installed."""
    made = bundle(
        pair,
        "rpi5-coral-pcie",
        tmp_path / "b.tar.gz",
        sinks=["mqtt://pi:pw@broker.local/cam", "jsonl:r.jsonl"],
        extra_args=["--mqtt-discovery", "--mqtt-retain"],
    )
    rendered = extract(made.path, tmp_path / "x") / "install.sh"
    text = rendered.read_text()
    assert "\nBOOT_ARGS=('--line' " in text and "\nMQTT_CLEAR=('mqtt-clear' " in text  # the lists are not empty
    for script in (SCRIPTS / "install.sh", rendered):
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, syntax.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI") == "true":  # .ci/run installs it
            pytest.fail("shellcheck is not installed under CI=true (apt-get install shellcheck)")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); bash -n passed")
    for script in (SCRIPTS / "install.sh", rendered):
        lint = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, check=False)
        assert lint.returncode == 0, lint.stdout


def test_placeholders_and_shell_text_in_values_stay_literal(pair, tmp_path, bundle):
    """Values that look like the templates' own placeholders (@VALUES@, @EXEC_START@) or hold quotes, $(...), %
    and backslashes are filled in once and stay data: the unit has one ExecStart, install.sh's dry run runs nothing
    and shows the --pip-spec as given."""
    canary = tmp_path / "pwned"
    board = tmp_path / "board.toml"
    hostile = f"cam @EXEC_START@ @USER@ '$(touch {canary})' 100% \\\\"  # TOML: one backslash
    board.write_text(load_profile("rpi5").to_toml().replace('description = "', f'description = "{hostile} ', 1))
    spec = f"edgecls @VALUES@ @PROFILE@ '$(touch {canary})'"
    sink = f"jsonl:/tmp/@STATE_DIR@'$(touch {canary})'.jsonl"
    made = bundle(pair, load_profile(board), tmp_path / "b.tar.gz", pip_spec=spec, sinks=[sink])
    root = extract(made.path, tmp_path / "x")
    unit = (root / "edgecls.service").read_text().splitlines()
    exec_start = (
        "ExecStart=/opt/edgecls/venv/bin/edgecls run /opt/edgecls/model.tflite --profile /opt/edgecls/profile.toml "
        f"--labels /opt/edgecls/labels.txt --sink \"jsonl:/tmp/@STATE_DIR@'$$(touch {canary})'.jsonl\" --quiet "
        "--stats-every 60"
    )
    assert [line for line in unit if line.startswith("ExecStart=")] == [exec_start]
    (description,) = [line for line in unit if line.startswith("Description=")]
    assert f"cam @EXEC_START@ @USER@ '$(touch {canary})' 100%% /" in description  # % doubled, no trailing \
    assert [line for line in unit if line.startswith("User=")] == ["User=edgecls"]
    script = (root / "install.sh").read_text()
    assert f"\nPIP_SPEC='edgecls @VALUES@ @PROFILE@ '\"'\"'$(touch {canary})'\"'\"''\n" in script
    dry = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"], capture_output=True, text=True, timeout=60, check=False
    )
    assert dry.returncode == 0, dry.stderr
    assert f"--disable-pip-version-check --constraint /opt/edgecls/constraints.txt {spec}\n" in dry.stdout or (
        f"--disable-pip-version-check {spec}\n" in dry.stdout  # no numpy in this system: no constraint
    )
    assert not canary.exists()


def test_render_fills_each_placeholder_once_and_refuses_a_template_that_drifted():
    from edgecls.device.installer import render

    assert render("a=@A@ b=@B@", {"A": "@B@", "B": "@A@"}) == "a=@B@ b=@A@"  # a value is never read again
    with pytest.raises(ValueError, match=r"placeholders \['A', 'B'\] do not match the values \['A'\]"):
        render("@A@ @B@", {"A": "x"})
    with pytest.raises(ValueError, match="do not match"):
        render("@A@", {"A": "x", "EXTRA": "y"})


def test_an_installed_edgecls_reads_its_device_scripts_from_the_wheel(wheel, tmp_path):
    """The wheel (what a device or a pip install gets) carries the templates as package data, and an edgecls
    imported from it, not from this checkout, renders them."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"edgecls/device/scripts/install.sh", "edgecls/device/scripts/edgecls.service"} <= names
        archive.extractall(tmp_path / "site")
    probe = (
        "import edgecls.device.installer as i, sys; from edgecls.device.profiles import load_profile; "
        "print(i.__file__); "
        "sys.stdout.write(i.service_unit(load_profile('rpi5'), prefix='/opt/edgecls', user='edgecls', args=['x']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    where, unit = done.stdout.split("\n", 1)
    assert Path(where).is_relative_to(tmp_path / "site")
    assert "ExecStart=x\n" in unit and "WantedBy=multi-user.target" in unit
