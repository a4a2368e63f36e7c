"""Device profiles: every bundled profile loads, validates and round-trips; broken ones are precise errors; and
`edgecls run --profile` applies a profile with command-line flags overriding it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecls.device.profiles import list_profiles, load_profile, parse_profile
from edgecls.errors import ConfigError
from edgecls.live.sources import OpenCVSource, PicameraSource, parse_source

REQUIRED = {
    "rpi5",
    "rpi4",
    "rpi3b-plus",
    "rpi-zero-2w",
    "rpi4-coral-usb",
    "rpi5-coral-pcie",
    "coral-dev-board",
    "linux-usb-camera",
}

VALID = """
name = "bench-board"
description = "a test board"
board = "test"

[camera]
source = "demo"
fps = 60.0

[runtime]
threads = 1

[smoothing]
ema = 0.5
hold = 2
"""


def edgecls(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecls", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_every_required_profile_is_bundled_and_round_trips():
    profiles = {p.name: p for p in list_profiles()}
    assert REQUIRED <= set(profiles)
    for name, profile in profiles.items():
        assert profile.path is not None and profile.path.stem == name
        again = parse_profile(profile.to_toml(), origin="round trip")
        assert again.data == profile.data, name
        assert load_profile(profile.path).data == profile.data  # by path as well as by name


def test_profiles_hold_what_each_board_needs():
    for profile in list_profiles():
        cam, runtime = profile.camera, profile.runtime
        assert cam["source"]
        if cam["source"].startswith("picam"):
            assert cam["main_size"] and cam["lores_format"] in ("YUV420", "RGB888") and cam["buffer_count"] >= 2
        if "coral" in profile.name:
            assert runtime["delegate"] == "edgetpu" and runtime["device"] and runtime["allow_cpu_fallback"] is False
        if profile.name.startswith("rpi"):
            assert any(e["line"] == "camera_auto_detect=1" for e in profile.boot_lines)
    assert load_profile("rpi4-coral-usb").runtime["device"] == "usb"
    assert load_profile("rpi5-coral-pcie").runtime["device"] == "pci:0"
    assert any(e["line"] == "dtparam=pciex1" for e in load_profile("rpi5-coral-pcie").boot_lines)


def test_boot_fragment_has_a_comment_above_every_line():
    profile = load_profile("rpi5-coral-pcie")
    lines = profile.boot_fragment().splitlines()
    settings = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    assert len(settings) == len(profile.boot_lines) >= 3
    assert all(lines[i - 1].startswith("# ") and len(lines[i - 1]) > 10 for i in settings)
    assert "nothing to add" in load_profile("linux-usb-camera").boot_fragment()


def test_profile_camera_settings_reach_the_source():
    source = parse_source(load_profile("rpi5").source_config(), model_size=(224, 224))
    assert isinstance(source, PicameraSource)
    assert source.main_size == (1536, 864) and source.lores_format == "RGB888" and source.sensor_mode is None
    assert source.lores_size == (398, 224)  # the sensor's aspect ratio, just over the model input
    assert source.controls["FrameRate"] == 30.0 and source.buffer_count == 6
    usb = parse_source(load_profile("linux-usb-camera").source_config())
    assert isinstance(usb, OpenCVSource)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('board = "test"', 'board = "test"\ncolour = 1'), "unknown key colour"),
        (lambda t: t.replace("threads = 1", "threads = 0"), "runtime.threads must be an integer >= 1 (received 0)"),
        (lambda t: t.replace("threads = 1", 'threads = "two"'), "runtime.threads must be an integer >= 1"),
        (lambda t: t.replace("[runtime]\nthreads = 1\n", ""), "missing runtime"),
        (lambda t: t.replace("ema = 0.5", "ema = 1.5"), "smoothing.ema must be a number > 0.0 and <= 1.0"),
        (lambda t: t.replace("threads = 1", 'threads = 1\ndevice = "usb"'), "needs runtime.delegate = 'edgetpu'"),
        (lambda t: t.replace("threads = 1", 'threads = 1\ndelegate = "edgetpu"\ndevice = "usb:x"'), "runtime.device"),
        (lambda t: t.replace("fps = 60.0", 'fps = 60.0\nlores_format = "YUV420"'), "only apply to a picam source"),
        (lambda t: t.replace('source = "demo"', 'source = "picam"\nmain_size = [640]'), "camera.main_size must be"),
        (lambda t: t.replace('source = "demo"', 'source = "picam"\nwidth = 640'), "takes camera.main_size"),
        (lambda t: t + '\n[boot]\n[[boot.config]]\nline = "x=1"\n', "missing boot.config[0].comment"),
        (lambda t: t.replace("[camera]", "[camera"), "is not valid TOML"),
    ],
)
def test_broken_profiles_are_precise_errors(edit, message):
    with pytest.raises(ConfigError, match=None) as err:
        parse_profile(edit(VALID), origin="broken.toml")
    assert message in str(err.value) and "broken.toml" in str(err.value)


def test_lookup_by_name_path_and_search_path(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"no profile named 'rpi9'; available: .*rpi5"):
        load_profile("rpi9")
    (tmp_path / "bench-board.toml").write_text(VALID)
    monkeypatch.setenv("EDGECLS_PROFILE_PATH", str(tmp_path))
    assert load_profile("bench-board").camera["source"] == "demo"
    assert "bench-board" in {p.name for p in list_profiles()}
    # a file given by path may have any name (a deploy bundle installs its profile as profile.toml) ...
    (tmp_path / "profile.toml").write_text(VALID)
    assert load_profile(tmp_path / "profile.toml").name == "bench-board"
    # ... but a profile found by name in a search folder must carry its file's name
    with pytest.raises(ConfigError, match="must match the file name"):
        list_profiles()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('name = "bench-board"', 'name = "bench board"', "name must be a name of letters"),
        ('name = "bench-board"', 'name = "../etc"', "name must be a name of letters"),
        (
            "description = ",
            'description = "x\\nExecStartPre=/bin/sh" #',
            "description must be a non-empty string on one",
        ),
    ],
)
def test_values_that_reach_a_deploy_bundle_are_checked(old, new, expected):
    assert old in VALID
    with pytest.raises(ConfigError, match=expected):
        parse_profile(VALID.replace(old, new, 1), origin="x.toml")


def test_profiles_cli():
    listing = edgecls("profiles")
    assert listing.returncode == 0
    for name in REQUIRED:
        assert any(line.startswith(name + " ") for line in listing.stdout.splitlines()), name
    shown = edgecls("profiles", "rpi4-coral-usb")
    assert 'delegate = "edgetpu"' in shown.stdout and "dtoverlay=vc4-kms-v3d" in shown.stdout
    assert json.loads(edgecls("profiles", "rpi5", "--json").stdout)["camera"]["lores_format"] == "RGB888"
    missing = edgecls("profiles", "rpi9")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no profile named")


def test_run_with_a_profile_and_overrides(coral, tmp_path):
    profile = tmp_path / "bench-board.toml"
    profile.write_text(VALID)
    model = str(coral / "mobilenet_v1_0.25_128_quant.tflite")
    result = edgecls("run", model, "--profile", str(profile), "--max-frames", "4", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4  # the profile's demo camera
    # the profile's smoothing (ema 0.5) blends frames; --ema 1 on the command line turns it off
    assert any(abs(r["decision"]["score"] - r["predictions"][0]["score"]) > 1e-6 for r in lines[1:])
    raw = edgecls("run", model, "--profile", str(profile), "--max-frames", "4", "--json", "--ema", "1", "--hold", "1")
    assert all(
        abs(json.loads(line)["decision"]["score"] - json.loads(line)["predictions"][0]["score"]) < 1e-6
        for line in raw.stdout.splitlines()
    )
    # --source overrides the profile's camera; its smoothing and threads still apply
    cat = edgecls("run", model, "--profile", str(profile), "--source", str(coral / "cat.bmp"), "--json")
    assert cat.returncode == 0, cat.stderr
    assert "cat" in json.loads(cat.stdout.splitlines()[0])["predictions"][0]["label"]


def test_run_profile_with_edgetpu_never_falls_back_silently(coral, tmp_path):
    text = VALID.replace("threads = 1", 'threads = 1\ndelegate = "edgetpu"\ndevice = "usb"')
    (tmp_path / "bench-board.toml").write_text(text)
    env = {"EDGECLS_EDGETPU_LIBRARY": "/nonexistent/libedgetpu.so.1"}
    model = str(coral / "mobilenet_v1_0.25_128_quant.tflite")
    strict = edgecls("run", model, "--profile", str(tmp_path / "bench-board.toml"), "--max-frames", "1", env=env)
    assert strict.returncode == 1 and strict.stderr.startswith("error: the Edge TPU runtime library")
    loud = edgecls(
        "run",
        model,
        "--profile",
        str(tmp_path / "bench-board.toml"),
        "--max-frames",
        "1",
        "--allow-cpu-fallback",
        "-q",
        env=env,
    )
    assert loud.returncode == 0, loud.stderr
    assert "WARNING: DELEGATE NOT USED" in loud.stderr
    # a delegate on the command line replaces the profile's
    cpu = edgecls(
        "run",
        model,
        "--profile",
        str(tmp_path / "bench-board.toml"),
        "--max-frames",
        "1",
        "-q",
        "--delegate",
        str(Path("/nonexistent/lib.so")),
        env=env,
    )
    assert cpu.returncode == 1 and "delegate library /nonexistent/lib.so cannot be loaded" in cpu.stderr


def test_run_rejects_a_broken_profile_in_one_line(coral, tmp_path):
    (tmp_path / "bad.toml").write_text(VALID.replace("threads = 1", "threads = -1").replace("bench-board", "bad"))
    result = edgecls("run", str(coral / "cat.bmp"), "--profile", str(tmp_path / "bad.toml"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"error: profile {tmp_path / 'bad.toml'}: runtime.threads must be an integer >= 1 (received -1)"
    )
    nosource = edgecls("run", str(coral / "mobilenet_v1_0.25_128_quant.tflite"))
    assert nosource.returncode == 1 and "--profile NAME" in nosource.stderr


def test_a_profile_applied_builds_a_stream(coral, tmp_path):
    import edgecls

    (tmp_path / "bench-board.toml").write_text(VALID)
    config = edgecls.load_profile(tmp_path / "bench-board.toml").apply(edgecls.StreamConfig(max_frames=2))
    assert config.classifier.num_threads == 1 and config.smoothing.alpha == 0.5 and config.smoothing.hold == 2
    with edgecls.Stream.from_config(coral / "mobilenet_v1_0.25_128_quant.tflite", config) as stream:
        results = list(stream)
    assert len(results) == 2 and stream.classifier.num_threads == 1


def test_every_picam_profile_configures_the_camera_it_describes():
    """Each picam profile opened against the picamera2 stand-in: the calls picamera2 documents, with its settings."""
    from test_sources import Picamera2StandIn

    for profile in list_profiles():
        cam = profile.camera
        if not cam["source"].startswith("picam"):
            continue
        source = parse_source(profile.source_config(), model_size=(224, 224))
        source._factory = Picamera2StandIn
        Picamera2StandIn.platform = "PISP" if profile.name.startswith("rpi5") else "VC4"
        with source:
            frame = source.read()
            config = source.configuration
        assert config["main"]["size"] == tuple(cam["main_size"]), profile.name
        assert config["main"]["format"] == cam["main_format"], profile.name
        (lw, lh), (mw, mh) = config["lores"]["size"], config["main"]["size"]
        assert abs(lw / lh - mw / mh) < 0.02 * mw / mh, profile.name  # no squeeze
        assert config["lores"]["format"] == cam["lores_format"] and config["buffer_count"] == cam["buffer_count"]
        assert config["controls"]["FrameRate"] == cam["fps"] and config["queue"] is False
        if "sensor_mode" in cam:
            assert config["sensor"]["output_size"] == Picamera2StandIn.instances[-1].sensor_modes[0]["size"]
        assert lw >= 224 and lh >= 224 and lw <= cam["main_size"][0]  # just over the model input
        assert frame.ndim in (2, 3)


def test_profile_apply_fills_only_what_was_left_unset():
    """The merge `edgecls run --profile` does, from Python: the profile fills the unset fields; a value the caller
    gave wins, even one equal to the built-in default (alpha 1.0 turns the profile's averaging off)."""
    from edgecls.live.smoothing import Smoothing
    from edgecls.live.sources import PicameraOptions, SourceConfig
    from edgecls.live.stream import StreamConfig
    from edgecls.model.classifier import ClassifierConfig

    rpi5, coral = load_profile("rpi5"), load_profile("rpi5-coral-pcie")
    filled = rpi5.apply(StreamConfig())
    assert filled.source.spec == "picam" and filled.source.fps == rpi5.camera["fps"]
    assert filled.source.picamera.main_size == tuple(rpi5.camera["main_size"])
    assert filled.classifier.num_threads == rpi5.runtime["threads"] and filled.classifier.backend == "auto"
    assert filled.smoothing == rpi5.smoothing_config() and not filled.smoothing.unset

    mine = StreamConfig(
        source=SourceConfig("picam", fps=15, picamera=PicameraOptions(buffer_count=3)),
        classifier=ClassifierConfig(num_threads=1, backend="auto", top_k=2),
        smoothing=Smoothing(alpha=1.0),
        max_frames=7,
    )
    applied = rpi5.apply(mine)
    assert (applied.source.fps, applied.source.picamera.buffer_count) == (15, 3)  # given: kept
    assert applied.source.picamera.main_size == tuple(rpi5.camera["main_size"])  # unset: the profile's
    assert (applied.classifier.num_threads, applied.classifier.top_k, applied.max_frames) == (1, 2, 7)
    assert applied.smoothing.alpha == 1.0 and applied.smoothing.hold == rpi5.smoothing["hold"]
    assert mine.smoothing.unset == {"hold", "margin", "min_score"}  # the caller's config is left as it was

    other = rpi5.apply(StreamConfig(source=SourceConfig("clip.mp4")))  # not the profile's camera: none of its settings
    assert other.source == SourceConfig("clip.mp4") and other.classifier.num_threads == rpi5.runtime["threads"]

    edgetpu = coral.apply(StreamConfig())
    assert (edgetpu.classifier.delegate, edgetpu.classifier.device) == ("edgetpu", "pci:0")
    own = coral.apply(StreamConfig(classifier=ClassifierConfig(delegate="/opt/lib.so")))
    assert (own.classifier.delegate, own.classifier.device) == ("/opt/lib.so", None)  # replaced with its device
    usb = coral.apply(StreamConfig(classifier=ClassifierConfig(device="usb")))
    assert (usb.classifier.delegate, usb.classifier.device) == (None, "usb")
    fallback = coral.apply(StreamConfig(classifier=ClassifierConfig(allow_cpu_fallback=True)))
    assert fallback.classifier.allow_cpu_fallback

    sensor = rpi5.apply(StreamConfig(source=SourceConfig("imx500")))  # the network runs on the sensor
    assert sensor.classifier == ClassifierConfig() and sensor.source.picamera is None
    ai = load_profile("rpi5-ai-camera").apply(StreamConfig(source=SourceConfig("imx500:net.rpk")))
    assert ai.source.spec == "imx500:net.rpk" and ai.source.picamera.main_size == (1024, 768)  # its camera, any network
