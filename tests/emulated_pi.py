"""Install a deploy bundle on an emulated Raspberry Pi OS and run the service it installs.

    sudo .venv/bin/python tests/emulated_pi.py --suite bookworm        # Debian 12, Python 3.11, numpy 1.24
    sudo .venv/bin/python tests/emulated_pi.py --suite trixie          # Debian 13, Python 3.13, numpy 2.2

It builds a Debian arm64 root filesystem with debootstrap (Raspberry Pi OS is Debian's userland with Raspberry Pi's
packages on top) and runs it under qemu-user through binfmt_misc. In the root it stands in what Debian lacks:
``python3-picamera2`` (Raspberry Pi's archive has it) by a stub, clearly named, that serves the Coral cat photo as
lores frames and imports ``numexpr``, a Debian module compiled against the system numpy, as picamera2's own
companions (simplejpeg, pidng) are; and a ``/boot/firmware/config.txt`` with Raspberry Pi OS's default lines.

Then, as a user with a Pi would: ``edgecls deploy`` (profile rpi5, the Coral MobileNet V2, a jsonl sink in the
service's working directory and an MQTT sink with a password to a real Mosquitto on the host), the bundle copied into
the root, ``sudo ./install.sh --mqtt-password-file F`` with its defaults. Checked: the unit is enabled (no systemd
runs in a chroot, so it is not started), config.txt gained no duplicate line, the password is only in the 0600
EnvironmentFile; then the installed unit's ExecStart runs as its user, in its working directory, with its
environment: on the camera until SIGTERM, and on a video of the cat; the results must name the labels Coral
documents for the photo, and reach the broker; ``edgecls doctor`` runs. A JSON report (timings, the versions pip
chose) goes to --report.

Then the Raspberry Pi AI Camera (IMX500), whose packages only Raspberry Pi's archive has: ``imx500-all`` and
``imx500-tools`` are STUB packages, clearly named, built here with dpkg-deb and served from a local apt repository in
the root (the stub ``imx500-package`` turns the stand-in packerOut.zip into the stand-in network.rpk), and picamera2
is replaced by the stand-in of tests/picamera2_standin (IMX500 and Picamera2 as picamera2's source behaves). A run
with an imx500/ package is deployed with profile rpi5-ai-camera over the first install: install.sh must install the
two packages with apt-get, make /opt/edgecls/imx500/network.rpk with imx500-package, and a second install.sh must
change nothing (the packages and the .rpk are there); the unit's ExecStart must name the .rpk and classify with the
network's outputs, the bundle's labels and the on-sensor times.

What cannot run here: systemd as PID 1 (the unit is parsed and its ExecStart run by this script) and a real camera.
Needs root, debootstrap, qemu-user-static and binfmt-support (``.ci/run`` installs them), and the network for
Debian's and PyPI's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STANDIN = HERE / "picamera2_standin"  # the picamera2 stand-in with an AI Camera, and its network files
SHARED = Path(os.environ.get("EDGECLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CORAL = SHARED / "coral"
MODEL = "mobilenet_v2_1.0_224_quant.tflite"
# Coral's documented result for cat.bmp with this model (classify_image.py in google-coral/pycoral): Egyptian cat.
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}
SUITES = {"bookworm": "3.11", "trixie": "3.13"}
PACKAGES = ["python3", "python3-venv", "python3-numpy", "python3-numexpr", "ca-certificates", "systemd", "passwd"]
SECRET = "s3cret$`\"pw'"  # quotes, $ and a backtick: the EnvironmentFile must carry them literally

# A Cortex-A76 (Raspberry Pi 5) /proc/cpuinfo: qemu-user passes the host's x86 one through, and XNNPACK's cpuinfo
# then crashes at its first allocation.
CPUINFO = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
    "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for n in range(4)
)

# Raspberry Pi OS bookworm's default /boot/firmware/config.txt (the lines that matter here: camera_auto_detect is
# already on, and model filters [cm4] and [cm5] come before the final [all]).
CONFIG_TXT = """# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""

# The picamera2 stand-in. It answers the calls edgecls makes (see edgecls/live/sources.py PicameraSource) with the
# layouts picamera2 documents, and, like picamera2 on Raspberry Pi OS, imports a module built against the system's
# numpy: if the venv's numpy shadowed the system one, this import is what breaks.
PICAMERA2_STUB = '''"""STUB of picamera2 for the emulated Raspberry Pi OS test (tests/emulated_pi.py): NOT the real library.

Serves one photo as the lores stream; imports numexpr (built against the system numpy) as picamera2 does simplejpeg.
"""
import os
import time

import numexpr  # noqa: F401  the numpy-ABI canary
import numpy as np

STUB = True
_PHOTO = os.path.join(os.path.dirname(__file__), "photo_rgb.npy")


class Picamera2:
    def __init__(self, camera_num=0):
        if camera_num != 0:
            raise IndexError("list index out of range")
        self.sensor_modes = [{"size": (1536, 864), "bit_depth": 10}, {"size": (2304, 1296), "bit_depth": 10}]
        self._config = None
        self._frame = None

    def create_video_configuration(self, main=None, lores=None, buffer_count=6, queue=True, sensor=None,
                                   controls=None, colour_space=None):
        return {"main": dict(main), "lores": dict(lores), "buffer_count": buffer_count, "sensor": sensor}

    def align_configuration(self, config):
        pass

    def configure(self, config):
        self._config = config

    def start(self):
        w, h = self._config["lores"]["size"]
        photo = np.load(_PHOTO)  # RGB, the photo centred in the sensor's field of view
        ph, pw = photo.shape[:2]
        scale = max(w / pw, h / ph)
        ys = np.clip(((np.arange(h) - h / 2) / scale + ph / 2).astype(int), 0, ph - 1)
        xs = np.clip(((np.arange(w) - w / 2) / scale + pw / 2).astype(int), 0, pw - 1)
        rgb = photo[ys][:, xs]
        fmt = self._config["lores"]["format"]
        if fmt == "RGB888":  # picamera2's RGB888 is B, G, R in memory
            self._frame = np.ascontiguousarray(rgb[..., ::-1])
        elif fmt == "BGR888":
            self._frame = np.ascontiguousarray(rgb)
        elif fmt == "YUV420":  # I420: Y (h rows), then U and V, each h/4 rows of width w
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = (b - y) * 0.564 + 128
            v = (r - y) * 0.713 + 128
            sub = lambda p: p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)
            self._frame = np.clip(np.concatenate([y, sub(u), sub(v)]), 0, 255).astype(np.uint8)
        else:
            raise RuntimeError("the stub serves RGB888, BGR888 and YUV420 lores streams")
        numexpr.evaluate("a + 1", local_dict={"a": np.arange(3)})

    def capture_array(self, name="main", wait=None):
        time.sleep(0.05)
        return self._frame.copy()

    def stop(self):
        pass

    def close(self):
        pass
'''


def log(message: str) -> None:
    print(f"[emulated-pi {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Failure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def host_problem() -> str | None:
    """Why this host cannot run the emulation (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mount namespaces)"
    for tool in ("debootstrap", "unshare", "chroot", "update-binfmts", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install debootstrap qemu-user-static binfmt-support"
    if not (
        Path("/usr/bin/qemu-aarch64-static").exists() or Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists()
    ):
        return "qemu-user-static is missing: apt-get install qemu-user-static"
    if not (CORAL / MODEL).is_file():
        return f"the Coral test model is not at {CORAL / MODEL} (../shared/data)"
    return None


def ensure_binfmt() -> None:
    folder = Path("/proc/sys/fs/binfmt_misc")
    if not (folder / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(folder)], check=True)
    entry = folder / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)
    text = entry.read_text()
    flags = re.search(r"^flags: *(\S*)", text, re.MULTILINE)
    check(
        "enabled" in text and flags is not None and "F" in flags.group(1),
        f"binfmt qemu-aarch64 must be enabled with flag F (the interpreter opened at registration):\n{text}",
    )


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (the same one debootstrap should use)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def build_root(suite: str, target: Path, cache: Path | None) -> float:
    """A fresh arm64 root for ``suite`` at ``target`` (copied from ``cache`` when a base is kept there)."""
    start = time.monotonic()
    base = cache / f"{suite}-arm64-base" if cache else target
    if not (base / "usr/bin/python3").exists():
        if base.exists():
            shutil.rmtree(base)
        log(f"debootstrap {suite} arm64 into {base}")
        subprocess.run(
            [
                "debootstrap",
                "--arch=arm64",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                str(base),
                debian_mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if base != target:
        if target.exists():
            shutil.rmtree(target)
        subprocess.run(["cp", "-a", str(base), str(target)], check=True)
    return time.monotonic() - start


class Root:
    """Runs commands inside the arm64 root, in a private mount namespace with /proc (an ARM cpuinfo over it), /sys
    and /dev."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "etc/edgecls-test-cpuinfo").write_text(CPUINFO)

    def _command(self, argv: list[str], user: str | None = None, groups: str | None = None) -> list[str]:
        r = shlex.quote(str(self.path))
        mounts = (
            f"mount -t proc proc {r}/proc && mount --bind {r}/etc/edgecls-test-cpuinfo {r}/proc/cpuinfo && "
            f"mount -t sysfs -o ro sysfs {r}/sys && mount --rbind /dev {r}/dev && "
        )
        spec = []
        if user:
            spec = [f"--userspec={user}"] + ([f"--groups={groups}"] if groups else [])
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            mounts + 'exec chroot "$@"',
            "sh",
            *spec,
            str(self.path),
            *argv,
        ]

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        groups: str | None = None,
        timeout: float = 1800,
    ) -> subprocess.CompletedProcess[str]:
        full = ["env", "-i", *(f"{k}={v}" for k, v in (env or self.base_env()).items()), *argv]
        return subprocess.run(
            self._command(full, user, groups), capture_output=True, text=True, timeout=timeout, check=False
        )

    def popen(self, argv: list[str], *, user: str, groups: str | None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._command(argv, user, groups), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    @staticmethod
    def base_env() -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PIP_CERT": "/etc/ssl/host-ca.crt",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_DEFAULT_TIMEOUT": "180",
        }


def prepare_root(root: Path) -> None:
    """What a Raspberry Pi OS image has and a Debian root lacks: the camera library (a stub), config.txt; and what
    this host's network needs: its resolver and CA bundle."""
    import numpy as np
    from PIL import Image

    dist = root / "usr/lib/python3/dist-packages/picamera2"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "__init__.py").write_text(PICAMERA2_STUB)
    np.save(dist / "photo_rgb.npy", np.asarray(Image.open(CORAL / "cat.bmp").convert("RGB")))
    boot = root / "boot/firmware"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "config.txt").write_text(CONFIG_TXT)
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copy("/etc/resolv.conf", resolv)
    ca = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    shutil.copy(ca, root / "etc/ssl/host-ca.crt")


# -- the AI Camera: stub packages of Raspberry Pi's archive, the picamera2 stand-in, a run with an IMX500 package ------

AI_LABELS = ["daisy", "dandelion", "rose", "sunflower"]
AI_OUTPUTS = [[20, 30, 200, 6]]  # the stand-in network's raw uint8 scores: rose, 200/256
AI_KPI_US = [4100, 900]  # its on-sensor DNN and DSP times
STUB_LOG = "/var/log/edgecls-stub-imx500-package.log"
IMX500_PACKAGE_STUB = f"""#!/bin/sh
# STUB of Raspberry Pi's imx500-package (package imx500-tools) for tests/emulated_pi.py: NOT the real tool.
# As the real one: imx500-package -i packerOut.zip -o DIR writes DIR/network.rpk (here the stand-in's format).
set -e
echo "$*" >> {STUB_LOG}
while getopts "i:o:" opt; do case "$opt" in i) IN="$OPTARG" ;; o) OUT="$OPTARG" ;; *) exit 2 ;; esac; done
[ -f "$IN" ] || {{ echo "imx500-package: no such file $IN" >&2; exit 1; }}
exec python3 -c 'import sys, standin_rpk; print("stub: wrote", standin_rpk.package(sys.argv[1], sys.argv[2]))' \\
  "$IN" "$OUT"
"""


def build_stub_repository(repo: Path) -> None:
    """imx500-all and imx500-tools as STUB .deb packages in a flat apt repository at ``repo``."""
    import hashlib

    repo.mkdir(parents=True, exist_ok=True)
    packages = {
        "imx500-all": {
            "usr/share/doc/imx500-all/STUB": "STUB of Raspberry Pi's imx500-all (IMX500 firmware and "
            "models) for tests/emulated_pi.py\n"
        },
        "imx500-tools": {"usr/bin/imx500-package": IMX500_PACKAGE_STUB},
    }
    index = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in packages.items():
            pkg = Path(tmp) / name
            (pkg / "DEBIAN").mkdir(parents=True)
            (pkg / "DEBIAN/control").write_text(
                f"Package: {name}\nVersion: 0.0.0~edgecls.stub\nArchitecture: all\nMaintainer: edgecls tests "
                f"<tests@edgecls.invalid>\nDescription: STUB of Raspberry Pi's {name} for the emulated Raspberry Pi "
                "OS test\n NOT the real package: it exists for tests/emulated_pi.py only.\n"
            )
            for path, text in files.items():
                target = pkg / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                target.chmod(0o755 if "/bin/" in path else 0o644)
            deb = repo / f"{name}_0.0.0~edgecls.stub_all.deb"
            subprocess.run(
                ["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)], check=True, capture_output=True
            )
            control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
            data = deb.read_bytes()
            index.append(
                control.rstrip("\n") + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
    (repo / "Packages").write_text("\n".join(index))
    packages_file = (repo / "Packages").read_bytes()
    (repo / "Release").write_text(  # unsigned: the source says [trusted=yes]
        "Origin: edgecls-stub\nLabel: STUB of archive.raspberrypi.com for tests/emulated_pi.py\nSuite: stub\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\nArchitectures: all arm64\nSHA256:\n"
        f" {hashlib.sha256(packages_file).hexdigest()} {len(packages_file)} Packages\n"
    )


def prepare_ai_camera(root: Path) -> None:
    """The root as a Raspberry Pi OS with an AI Camera attached, as far as the test can make it: the picamera2
    stand-in (replacing the lores stub) and the stub packages in an apt source, not yet installed."""
    dist = root / "usr/lib/python3/dist-packages"
    shutil.rmtree(dist / "picamera2")
    shutil.copytree(STANDIN / "picamera2", dist / "picamera2", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(STANDIN / "standin_rpk.py", dist / "standin_rpk.py")
    build_stub_repository(root / "srv/edgecls-stub-apt")
    (root / "etc/apt/sources.list.d/edgecls-stub-raspberrypi.list").write_text(
        "# STUB of archive.raspberrypi.com for tests/emulated_pi.py: imx500-all and imx500-tools only\n"
        "deb [trusted=yes] file:/srv/edgecls-stub-apt ./\n"
    )


def make_ai_camera_run(folder: Path) -> Path:
    """A run as `edgecls export imx500` leaves it: model.tflite (the Coral MobileNet with a center-crop manifest),
    imx500/packerOut.zip (the stand-in's) and imx500/labels.txt."""
    sys.path.insert(0, str(STANDIN))
    try:
        import standin_rpk
    finally:
        sys.path.remove(str(STANDIN))
    from edgecls.model.manifest import embed_manifest

    (folder / "imx500").mkdir(parents=True)
    manifest = {"preprocess": {"resize": "center-crop"}, "output": {"activation": "probabilities"}}
    (folder / "model.tflite").write_bytes(embed_manifest((CORAL / MODEL).read_bytes(), manifest))
    standin_rpk.write_package(
        folder / "imx500/packerOut.zip", outputs=AI_OUTPUTS, kpi_us=AI_KPI_US, progress="none", not_ready_frames=5
    )
    (folder / "imx500/labels.txt").write_text("\n".join(AI_LABELS) + "\n")
    return folder


def make_video(path: Path, frames: int = 6) -> None:
    import cv2

    image = cv2.imread(str(CORAL / "cat.bmp"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (image.shape[1], image.shape[0]))
    for _ in range(frames):
        writer.write(image)
    writer.release()
    check(path.stat().st_size > 0, "OpenCV wrote no video")


class Broker:
    """A real Mosquitto on 127.0.0.1 that wants a user and password (the chroot shares the host's network)."""

    def __init__(self, folder: Path, user: str, password: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        passwords = folder / "passwords"
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(passwords), user, password], check=True, capture_output=True
        )
        config = folder / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
            f"log_dest file {folder}/mosquitto.log\nuser root\n"
        )
        self.process = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.messages: list[dict] = []
        self.discovery: dict[str, dict] = {}  # Home Assistant discovery configs (the service runs --mqtt-discovery)
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="emulated-pi-subscriber")
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([("edgecls/emulated", 1), ("homeassistant/#", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if message.topic.startswith("homeassistant/"):
            if not message.payload:  # an empty retained message deletes the config (install.sh --uninstall)
                self.discovery.pop(message.topic, None)
            else:
                self.discovery[message.topic] = json.loads(message.payload)
        else:
            self.messages.append(json.loads(message.payload))

    def close(self) -> None:
        self.client.loop_stop()
        self.process.terminate()
        self.process.wait(10)


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file (key -> values in order)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def exec_argv(value: str) -> list[str]:
    """ExecStart's words as systemd splits them: quotes and backslash escapes, then %% and $$ unescaped."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(value)]


def environment_file(text: str) -> dict[str, str]:
    """KEY="value" lines as systemd reads an EnvironmentFile (in double quotes, \\ escapes \\ " ` and $)."""
    env = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        if value.startswith('"') and value.endswith('"'):
            value = re.sub(r'\\([\\"`$])', r"\1", value[1:-1])
        env[key.strip()] = value
    return env


def service_identity(root: Path, user: str) -> tuple[int, int, str, str]:
    """(uid, gid, supplementary group ids, home) of ``user`` in the root's own passwd and group files."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            uid, gid, home = int(fields[2]), int(fields[3]), fields[5]
            break
    else:
        raise Failure(f"install.sh made no user {user}")
    groups = [
        line.split(":")[2]
        for line in (root / "etc/group").read_text().splitlines()
        if user in line.split(":")[3].split(",")
    ]
    return uid, gid, ",".join(groups), home


def results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def emulate(suite: str, work: Path, cache: Path | None, wheelhouse: bool) -> dict:
    report: dict = {"suite": suite, "timings_s": {}}
    ensure_binfmt()
    rootfs = work / f"{suite}-root"
    report["timings_s"]["root"] = round(build_root(suite, rootfs, cache), 1)
    prepare_root(rootfs)
    root = Root(rootfs)
    system_python = root.run(
        ["python3", "-c", ("import sys, numpy; print('%d.%d' % sys.version_info[:2], numpy.__version__)")]
    )
    check(system_python.returncode == 0, f"the root's python3 does not run: {system_python.stderr}")
    report["system_python"], report["system_numpy"] = system_python.stdout.split()
    log(f"{suite}: Python {report['system_python']}, numpy {report['system_numpy']} (system)")

    broker = Broker(work, "pi", SECRET) if shutil.which("mosquitto_passwd") else None
    try:
        # -- edgecls deploy, on the host, as the README says ---------------------------------------------------------
        bundle = work / "edgecls-rpi5.tar.gz"
        sinks = ["--sink", "jsonl:results.jsonl"]
        if broker:
            from urllib.parse import quote

            sinks += [
                "--sink",
                f"mqtt://pi:{quote(SECRET, safe='')}@127.0.0.1:{broker.port}/edgecls/emulated",
                "--mqtt-discovery",
            ]
        command = [
            sys.executable,
            "-m",
            "edgecls",
            "deploy",
            str(CORAL / MODEL),
            "--profile",
            "rpi5",
            "--out",
            str(bundle),
            *sinks,
            *(["--wheelhouse", suite] if wheelhouse else []),
        ]
        start = time.monotonic()
        made = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        report["timings_s"]["deploy"] = round(time.monotonic() - start, 1)
        check(made.returncode == 0, f"edgecls deploy failed:\n{made.stderr}")
        check(SECRET not in made.stdout + made.stderr, "edgecls deploy printed the MQTT password")
        shutil.copy(bundle, rootfs / "root" / bundle.name)
        (rootfs / "root/mqtt-password").write_text(SECRET + "\n")
        os.chmod(rootfs / "root/mqtt-password", 0o600)
        make_video(rootfs / "root/cat.mp4")  # root's own: the service user may not read it
        (rootfs / "srv").mkdir(exist_ok=True)
        shutil.copy(rootfs / "root/cat.mp4", rootfs / "srv/cat.mp4")

        # -- on the device: extract and install with the defaults ---------------------------------------------------
        unpacked = root.run(["tar", "xzf", f"/root/{bundle.name}", "-C", "/root"])
        check(unpacked.returncode == 0, f"tar failed in the root: {unpacked.stderr}")
        start = time.monotonic()
        log(f"{suite}: sudo ./install.sh --mqtt-password-file /root/mqtt-password")
        installed = root.run(["bash", "/root/edgecls-rpi5/install.sh", "--mqtt-password-file", "/root/mqtt-password"])
        report["timings_s"]["install"] = round(time.monotonic() - start, 1)
        report["install_output"] = (installed.stdout + installed.stderr).splitlines()[-40:]
        check(
            installed.returncode == 0,
            f"install.sh failed ({installed.returncode}):\n{installed.stdout}\n{installed.stderr}",
        )
        out = installed.stdout + installed.stderr
        check(SECRET not in out, "install.sh printed the MQTT password")
        check(
            f"keeping the system's numpy {report['system_numpy']}" in out,
            f"install.sh did not say its numpy choice:\n{out}",
        )
        check("was not started" in out, "install.sh should say it could not start the service in a chroot")
        wants = rootfs / "etc/systemd/system/multi-user.target.wants/edgecls.service"
        check(wants.is_symlink(), "edgecls.service is not enabled (no multi-user.target.wants link)")
        config = (rootfs / "boot/firmware/config.txt").read_text()
        check(config == CONFIG_TXT, "config.txt changed although camera_auto_detect=1 was already on")
        check("reboot" not in out.lower(), "install.sh asked for a reboot that is not needed")

        # -- the secret: only in the root-only EnvironmentFile --------------------------------------------------------
        env_file = rootfs / "etc/edgecls/edgecls.env"
        st = env_file.stat()
        check(stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, f"{env_file} must be root's, mode 0600")
        check(
            environment_file(env_file.read_text()).get("EDGECLS_MQTT_PASSWORD") == SECRET,
            "the EnvironmentFile does not hold the password as given",
        )
        leaks = [
            str(p.relative_to(rootfs))
            for folder in ("opt/edgecls", "etc/systemd", "var/lib/edgecls")
            for p in (rootfs / folder).rglob("*")
            if p.is_file() and not p.is_symlink() and "venv" not in p.parts and SECRET.encode() in p.read_bytes()
        ]
        check(not leaks, f"the MQTT password is in {leaks}")

        # -- the installed venv: the system numpy, and the ABI canary ------------------------------------------------
        venv = rootfs / "opt/edgecls/venv"
        probe = root.run(
            [
                "/opt/edgecls/venv/bin/python",
                "-c",
                "import json, numpy, numexpr, cv2, ai_edge_litert, picamera2, importlib.metadata as m; "
                "print(json.dumps({{'numpy_file': numpy.__file__, 'picamera2_stub': picamera2.STUB, "
                "'versions': {{d.metadata['Name']: d.version for d in m.distributions(path=[{!r}])}}}}))".format(
                    str(
                        next(
                            (Path("/") / p.relative_to(rootfs) for p in (venv / "lib").glob("python3*/site-packages")),
                            "",
                        )
                    )
                ),
            ]
        )
        check(probe.returncode == 0, f"the venv cannot import numpy, numexpr, cv2 and LiteRT together:\n{probe.stderr}")
        facts = json.loads(probe.stdout)
        check(facts["numpy_file"].startswith("/usr/lib/python3/"), f"the venv's numpy is not the system's: {facts}")
        report["venv_versions"] = facts["versions"]
        log(f"{suite}: pip chose {facts['versions']}")

        # -- the service, as systemd would start it --------------------------------------------------------------------
        unit = parse_unit((rootfs / "etc/systemd/system/edgecls.service").read_text())
        user, workdir = unit["User"][0], unit["WorkingDirectory"][0]
        uid, gid, groups, home = service_identity(rootfs, user)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "LANG": "C.UTF-8",
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
        }
        for item in unit.get("Environment", []):
            key, _, value = item.partition("=")
            env[key] = value
        for item in unit.get("EnvironmentFile", []):
            path = rootfs / item.lstrip("-").lstrip("/")
            if path.is_file():
                env.update(environment_file(path.read_text()))
        argv = exec_argv(unit["ExecStart"][0])
        # systemd hands the environment over without putting it in argv (where ps would show the password): here a
        # file only the service user can read, which a small launcher turns into the environment before exec
        env_copy = rootfs / workdir.lstrip("/") / ".emulated-service-env"

        def as_service(extra: list[str], program: list[str] | None = None) -> subprocess.Popen[str]:
            env_copy.write_text("".join(f"{k}={v}\0" for k, v in env.items()))
            os.chown(env_copy, uid, gid)
            os.chmod(env_copy, 0o600)
            code = (
                "import os, sys; f = sys.argv[1]; env = dict(kv.split('=', 1) for kv in open(f).read()"
                ".split('\\0') if kv); os.unlink(f); os.chdir(sys.argv[2]); os.execve(sys.argv[3], sys.argv[3:], env)"
            )
            launcher = ["/usr/bin/python3", "-c", code, "/" + str(env_copy.relative_to(rootfs)), workdir]
            return root.popen([*launcher, *(program or argv), *extra], user=f"{uid}:{gid}", groups=groups)

        sink_file = rootfs / workdir.lstrip("/") / "results.jsonl"
        start = time.monotonic()
        log(f"{suite}: the unit's ExecStart as {user} on the camera: {' '.join(argv)}")
        service = as_service([])
        deadline = time.monotonic() + 900
        while len(results(sink_file)) < 4 and service.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        first = time.monotonic() - start
        service.send_signal(signal.SIGTERM)
        try:
            output, _ = service.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            output, _ = service.communicate()
        report["timings_s"]["service_first_results"] = round(first, 1)
        report["service_output"] = output.splitlines()[-15:]
        got = results(sink_file)
        check(len(got) >= 4, f"the service wrote {len(got)} results (exit {service.returncode}):\n{output}")
        check(
            service.returncode == 0,
            f"the service did not stop cleanly on SIGTERM (exit {service.returncode}):\n{output}",
        )
        top = [r["predictions"][0]["label"] for r in got]
        check(all(label in CAT_LABELS for label in top), f"the camera (the cat photo) was classified as {top}")
        report["camera_top1"] = sorted(set(top))
        check(SECRET not in output, "the service printed the MQTT password")

        camera_count = len(got)
        denied = as_service(["--source", "/root/cat.mp4", "--max-frames", "3"])
        output, _ = denied.communicate(timeout=900)
        lines = output.strip().splitlines()
        check(
            denied.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: cannot read the source"),
            f"a source the service user may not read must give one error line (exit {denied.returncode}):\n{output}",
        )
        log(f"{suite}: the unit's ExecStart with --source /srv/cat.mp4 (OpenCV)")
        video = as_service(["--source", "/srv/cat.mp4", "--max-frames", "3"])
        output, _ = video.communicate(timeout=900)
        check(video.returncode == 0, f"the service command on a video failed ({video.returncode}):\n{output}")
        from_video = results(sink_file)[camera_count:]
        check(len(from_video) == 3, f"3 results expected from the video, found {len(from_video)}:\n{output}")
        check(
            all(r["predictions"][0]["label"] == "Egyptian cat" for r in from_video),
            f"cat.bmp must be an Egyptian cat (as Coral documents): {[r['predictions'][:2] for r in from_video]}",
        )
        report["video_top1"] = from_video[0]["predictions"][0]
        if broker:
            deadline = time.monotonic() + 20
            while len(broker.messages) < camera_count + 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            check(
                len(broker.messages) >= camera_count + 3,
                f"the broker received {len(broker.messages)} results of {camera_count + 3}",
            )
            report["mqtt_received"] = len(broker.messages)
            label_config = broker.discovery.get("homeassistant/sensor/edgecls_edgecls_emulated/label/config", {})
            check(
                label_config.get("state_topic") == "edgecls/emulated",
                f"the service must announce itself to Home Assistant (--mqtt-discovery): {broker.discovery}",
            )
            report["mqtt_discovery"] = sorted(broker.discovery)

        doctor = as_service([], ["/opt/edgecls/venv/bin/edgecls", "doctor"])
        output, _ = doctor.communicate(timeout=600)
        report["doctor"] = output.splitlines()
        check("Traceback" not in output and doctor.returncode in (0, 1), f"edgecls doctor failed:\n{output}")
        check(
            any("picamera2" in line and line.startswith("ok") for line in output.splitlines()),
            f"doctor does not see picamera2:\n{output}",
        )

        # -- install.sh again (how a new bundle is put in place), then --uninstall -------------------------------------
        start = time.monotonic()
        again = root.run(["bash", "/root/edgecls-rpi5/install.sh"])
        report["timings_s"]["reinstall"] = round(time.monotonic() - start, 1)
        check(again.returncode == 0, f"install.sh a second time failed:\n{again.stdout}\n{again.stderr}")
        check((rootfs / "boot/firmware/config.txt").read_text() == CONFIG_TXT, "a second install changed config.txt")
        check(
            environment_file(env_file.read_text()).get("EDGECLS_MQTT_PASSWORD") == SECRET,
            "a second install without --mqtt-password-file lost the stored password",
        )

        # -- the AI Camera: its bundle over this install, its packages from the (stub) archive, its .rpk -------------
        prepare_ai_camera(rootfs)
        ai_run = make_ai_camera_run(work / "ai-run")
        ai_bundle = work / "edgecls-rpi5-ai-camera.tar.gz"
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecls",
                "deploy",
                str(ai_run),
                "--profile",
                "rpi5-ai-camera",
                "--out",
                str(ai_bundle),
                *sinks,
                *(["--wheelhouse", suite] if wheelhouse else []),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        check(made.returncode == 0, f"edgecls deploy --profile rpi5-ai-camera failed:\n{made.stderr}")
        shutil.copy(ai_bundle, rootfs / "root" / ai_bundle.name)
        unpacked = root.run(["tar", "xzf", f"/root/{ai_bundle.name}", "-C", "/root"])
        check(unpacked.returncode == 0, f"tar failed in the root: {unpacked.stderr}")
        start = time.monotonic()
        log(f"{suite}: the AI Camera bundle: sudo ./install.sh (imx500-all, imx500-tools, imx500-package)")
        ai = root.run(["bash", "/root/edgecls-rpi5-ai-camera/install.sh"])
        report["timings_s"]["ai_camera_install"] = round(time.monotonic() - start, 1)
        out = ai.stdout + ai.stderr
        check(ai.returncode == 0, f"install.sh of the AI Camera bundle failed ({ai.returncode}):\n{out}")
        check("+ apt-get install -y imx500-all imx500-tools" in out, f"install.sh did not install the packages:\n{out}")
        check(
            "+ imx500-package -i /opt/edgecls/imx500/packerOut.zip -o /opt/edgecls/imx500/.package." in out,
            f"install.sh did not run imx500-package:\n{out}",
        )
        installed_pkgs = root.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "imx500-all", "imx500-tools"])
        check(
            installed_pkgs.stdout.split() == ["imx500-all", "0.0.0~edgecls.stub", "imx500-tools", "0.0.0~edgecls.stub"],
            f"the stub packages: {installed_pkgs.stdout}",
        )
        rpk = rootfs / "opt/edgecls/imx500/network.rpk"
        check(rpk.is_file() and stat.S_IMODE(rpk.stat().st_mode) == 0o644, f"no readable {rpk} after install.sh")
        check(
            not list(rpk.parent.glob(".package.*")) and not rpk.with_name("network.rpk.new").exists(),
            f"install.sh left its work files in {rpk.parent}: {sorted(p.name for p in rpk.parent.iterdir())}",
        )
        packaged = (rootfs / STUB_LOG.lstrip("/")).read_text().splitlines()
        check(len(packaged) == 1, f"imx500-package ran {len(packaged)} times: {packaged}")
        start = time.monotonic()
        ai_again = root.run(["bash", "/root/edgecls-rpi5-ai-camera/install.sh"])
        report["timings_s"]["ai_camera_reinstall"] = round(time.monotonic() - start, 1)
        out = ai_again.stdout + ai_again.stderr
        check(ai_again.returncode == 0, f"install.sh of the AI Camera bundle a second time failed:\n{out}")
        check(
            "imx500-all" not in out and "+ imx500-package" not in out and "is up to date" in out,
            f"a second install must leave the packages and the .rpk as they are:\n{out}",
        )
        check(len((rootfs / STUB_LOG.lstrip("/")).read_text().splitlines()) == 1, "imx500-package ran again")
        ai_unit = parse_unit((rootfs / "etc/systemd/system/edgecls.service").read_text())
        ai_argv = exec_argv(ai_unit["ExecStart"][0])
        check(
            "imx500:/opt/edgecls/imx500/network.rpk" in ai_argv, f"the service does not start with the .rpk: {ai_argv}"
        )
        before, mqtt_before = len(results(sink_file)), len(broker.messages) if broker else 0
        log(f"{suite}: the AI Camera unit's ExecStart as {user}: {' '.join(ai_argv)}")
        service = as_service(["--max-frames", "4"], ai_argv)
        output, _ = service.communicate(timeout=900)
        got = results(sink_file)[before:]
        check(
            service.returncode == 0 and len(got) == 4,
            f"the AI Camera service wrote {len(got)} results (exit {service.returncode}):\n{output}",
        )
        check(
            all(
                r["predictions"][0]["label"] == "rose"
                and r["predictions"][0]["score"] == 0.78125
                and r["latency_ms"]["invoke"] == 4.1
                and r["latency_ms"]["preprocess"] == 0.9
                for r in got
            ),
            f"the AI Camera's results must be the network's outputs with the bundle's labels: {got}",
        )
        report["ai_camera"] = {
            "top1": got[0]["predictions"][0],
            "latency_ms": got[0]["latency_ms"],
            "packages": installed_pkgs.stdout.split(),
            "service_output": output.splitlines()[-6:],
        }
        if broker:
            deadline = time.monotonic() + 20
            while len(broker.messages) < mqtt_before + 4 and time.monotonic() < deadline:
                time.sleep(0.2)
            sent = [m.get("decision", {}).get("label") for m in broker.messages[mqtt_before:]]
            check(sent == ["rose"] * 4, f"the broker received {sent} from the AI Camera's service")

        removed = root.run(["bash", "/opt/edgecls/install.sh", "--uninstall"])
        check(removed.returncode == 0, f"install.sh --uninstall failed:\n{removed.stdout}\n{removed.stderr}")
        gone = [
            p
            for p in (
                "opt/edgecls",
                "etc/systemd/system/edgecls.service",
                str(wants.relative_to(rootfs)),
                "etc/edgecls/edgecls.env",
            )
            if (rootfs / p).exists() or (rootfs / p).is_symlink()
        ]
        check(not gone, f"--uninstall left {gone}")
        if broker:  # the service's retained status and Home Assistant configs are off the broker
            check(
                "cleared 3 retained topic(s)" in removed.stdout,
                f"--uninstall did not clear the broker:\n{removed.stdout}\n{removed.stderr}",
            )
            deadline = time.monotonic() + 10
            while broker.discovery and time.monotonic() < deadline:
                time.sleep(0.2)
            check(not broker.discovery, f"--uninstall left Home Assistant configs: {sorted(broker.discovery)}")
        check(f"{user}:" not in (rootfs / "etc/passwd").read_text(), "--uninstall left the service user")
        check(sink_file.is_file(), "--uninstall must keep the service's results")
        check((rootfs / "boot/firmware/config.txt").read_text() == CONFIG_TXT, "--uninstall changed config.txt")
        report["timings_s"]["total"] = round(sum(v for v in report["timings_s"].values()), 1)
    finally:
        if broker:
            broker.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="bookworm")
    parser.add_argument("--work", type=Path, help="folder for the root and the bundle (default: a temporary one)")
    parser.add_argument("--cache", type=Path, help="keep the debootstrapped base root here and reuse it")
    parser.add_argument("--wheelhouse", action="store_true", help="bundle the aarch64 wheels (an offline install)")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    problem = host_problem()
    if problem:
        print(f"emulated-pi: cannot run here: {problem}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix=f"edgecls-emulated-{args.suite}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = emulate(args.suite, work, args.cache, args.wheelhouse)
        report["ok"] = True
    except (Failure, subprocess.SubprocessError, OSError) as exc:
        report = {"suite": args.suite, "ok": False, "error": str(exc)}
        print(f"emulated-pi: FAILED: {exc}", file=sys.stderr)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
