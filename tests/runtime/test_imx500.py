"""The Raspberry Pi AI Camera (IMX500) source, against the picamera2 stand-in in tests/picamera2_standin (modelled
on picamera2's own source; no sensor is attached to this machine): results ranked from the outputs that came with
each frame, frames before the network's first outputs skipped, the on-sensor DNN and DSP times in the latency split,
labels from the bundle, smoothing and a jsonl sink as for any source; the errors (no picamera2, no .rpk, labels that
do not fit, a network that is not a classifier); the order of construction picamera2 requires; the crop that
follows the training's resize mode; the AI Camera profiles and deploy bundle."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecls.errors import CameraError, ConfigError, LabelsError, ModelError, NotAClassifierError
from edgecls.live.imx500 import IMX500Source, SensorClassifier, crop_for, find_network, roi_for
from edgecls.live.smoothing import Smoother, Smoothing
from edgecls.live.sources import SourceConfig
from edgecls.model.classifier import ClassifierConfig

STANDIN = Path(__file__).resolve().parents[1] / "picamera2_standin"
LABELS = ["daisy", "dandelion", "rose", "sunflower"]
# what the stand-in network outputs in turn (raw uint8, dequantised by 1/256 as the IMX500 converter's softmax is)
OUTPUTS = [[200, 30, 20, 6], [20, 30, 200, 6], [90, 100, 60, 6]]
SQUARE_CROP = (508, 0, 3040, 3040)  # the centre of the 4056x3040 sensor at a square input's aspect ratio
FULL_SENSOR = (0, 0, 4056, 3040)


def _forget_standin() -> None:
    for name in [m for m in sys.modules if m in ("picamera2", "standin_rpk") or m.startswith("picamera2.")]:
        del sys.modules[name]


@pytest.fixture
def cam(monkeypatch):  # type: ignore[no-untyped-def]
    """The picamera2 stand-in as `picamera2` in this process, fresh (one imx500 at camera 0)."""
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.delenv("PICAMERA2_STANDIN_CAMERAS", raising=False)
    monkeypatch.delenv("PICAMERA2_STANDIN_EVENTS", raising=False)
    _forget_standin()
    import picamera2

    picamera2.reset()
    try:
        yield picamera2
    finally:
        picamera2.reset()
        _forget_standin()


def rpk_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(STANDIN))
    try:
        import standin_rpk
    finally:
        sys.path.remove(str(STANDIN))
    return standin_rpk


def make_run(
    folder: Path,
    coral: Path,
    *,
    resize: str | None = "center-crop",
    labels: list[str] | None = LABELS,
    rpk: bool = True,
    manifest_labels: list[str] | None = None,
    **network,
) -> Path:  # type: ignore[no-untyped-def]
    """A run folder as convert --target imx500 and imx500-package leave it: model.tflite (only its manifest is read:
    the resize mode), imx500/packerOut.zip, imx500/labels.txt and (made on the Pi) imx500/network.rpk."""
    from edgecls.model.manifest import embed_manifest

    folder.mkdir(parents=True)
    manifest = {"output": {"activation": "probabilities"}, **({"preprocess": {"resize": resize}} if resize else {})}
    base = (coral / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    (folder / "model.tflite").write_bytes(embed_manifest(base, manifest, labels=manifest_labels))
    network.setdefault("outputs", OUTPUTS)
    rpk_module().write_package(folder / "imx500" / "packerOut.zip", **network)
    if labels is not None:
        (folder / "imx500" / "labels.txt").write_text("\n".join(labels) + "\n")
    if rpk:
        rpk_module().write_rpk(folder / "imx500" / "network.rpk", **network)
    return folder


def edgecls(*args: str, env: dict[str, str] | None = None, standin: bool = True) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PICAMERA2_STANDIN")}
    if standin:
        base["PYTHONPATH"] = os.pathsep.join([str(STANDIN), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "edgecls", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **(env or {})},
        check=False,
    )


def expected_scores(image: np.ndarray, not_ready: int, every: int = 1) -> list[float]:
    """The scores the stand-in network gave the frame this image came with (the stand-in fills frame i with i % 256)."""
    index = int(image.flat[0])
    assert index >= not_ready and (index - not_ready) % every == 0, f"frame {index} had no outputs"
    return [v / 256 for v in OUTPUTS[(index - not_ready) // every % len(OUTPUTS)]]


# -- the stream ------------------------------------------------------------------------------------------------------


def test_the_stream_ranks_the_outputs_that_came_with_each_frame(cam, coral, tmp_path):
    import edgecls

    run = make_run(tmp_path / "run", coral, not_ready_frames=4, kpi_us=[5200, 1300])
    events = []
    with edgecls.Stream(
        str(run),
        source=SourceConfig("imx500", fps=200),
        classifier=ClassifierConfig(top_k=4),
        max_frames=8,
        on_event=events.append,
    ) as stream:
        results = list(stream)
        source = stream.source
    assert len(results) == 8
    for r in results:
        # the outputs of the frame's own request, in the bundle's labels: never a frame before the network ran
        by_index = {p.index: p.score for p in r.predictions}
        assert [by_index[i] for i in range(4)] == pytest.approx(expected_scores(r.frame, not_ready=4))
        assert [p.label for p in r.predictions] == [LABELS[p.index] for p in r.predictions]
        assert r.color == "bgr" and r.frame.shape == (480, 640, 3)  # RGB888 main: B, G, R in memory
        lat = r.latency  # the sensor's DSP and DNN times from the frame's KPI, added to the total
        assert (lat.preprocess_ms, lat.invoke_ms) == (1.3, 5.2)
        assert lat.total_ms == pytest.approx(lat.capture_to_start_ms + 1.3 + 5.2 + lat.postprocess_ms, abs=0.05)
    assert source.frames_not_ready == 4 and source.roi == SQUARE_CROP  # center-crop training: a square crop
    assert stream.stats().latency_ms["invoke"]["p50"] == 5.2
    assert [e.kind for e in events].count("source-progress") >= 2  # the firmware upload, then the network running
    assert any("first outputs" in e.message and "4 frame(s) without them skipped" in e.message for e in events)
    assert cam.OPEN == {}


def test_construction_follows_picamera2s_order_and_the_imx500s_camera_number(cam, coral, tmp_path):
    """IMX500 first (it hands the firmware to the sensor), then Picamera2 on the IMX500's own camera, here 1."""
    import edgecls

    cam.CAMERAS[:] = [
        {"Model": "imx708", "Num": 0, "Id": "i2c@80000/imx708@1a"},
        {"Model": "imx500", "Num": 1, "Id": "i2c@88000/imx500@1a"},
    ]
    run = make_run(tmp_path / "run", coral, resize="squash")
    with edgecls.Stream(str(run), source=SourceConfig("imx500", fps=200), max_frames=2) as stream:
        assert len(list(stream)) == 2
    assert cam.EVENTS[:3] == ["IMX500(network.rpk) -> camera 1", f"roi{FULL_SENSOR}", "Picamera2(1)"]
    assert cam.EVENTS[3].startswith("configure(main=(640, 480) RGB888, buffers=6, controls={'FrameRate': 200.0})")
    assert cam.EVENTS[4:] == ["start(1)", f"roi{FULL_SENSOR}", "stop(1)", "close(1)"]


def test_the_standin_catches_picamera2_used_in_the_wrong_order(cam, coral, tmp_path):
    """What the real library does with misuse, the stand-in does too: an IMX500 made while its camera is open fails
    (the firmware ioctl: EBUSY), and a camera opened before the IMX500 never gets the network's outputs."""
    rpk = make_run(tmp_path / "run", coral) / "imx500" / "network.rpk"
    from picamera2 import Picamera2
    from picamera2.devices import IMX500

    camera = Picamera2(0)
    with pytest.raises(RuntimeError, match="Device or resource busy"):
        IMX500(str(rpk))
    camera.close()
    camera = Picamera2(0)  # opened before any IMX500: the sensor has no network, and frames bring no outputs
    camera.start(camera.create_preview_configuration(buffer_count=2))
    held = [camera.capture_request(wait=1) for _ in range(2)]
    assert all("CnnOutputTensor" not in r.get_metadata() for r in held)
    with pytest.raises(TimeoutError):  # every buffer held: no frame comes until one is released
        camera.capture_request(wait=0.2)
    for r in held:
        r.release()
    camera.close()


def test_a_lost_camera_is_reopened_in_the_same_order_and_every_request_is_released(cam, coral, tmp_path):
    import edgecls

    run = make_run(tmp_path / "run", coral, not_ready_frames=1)
    cam.STALLS.append(4)  # the first camera stops after 4 frames (a loose ribbon cable)
    events, cameras = [], []
    with edgecls.Stream(
        str(run), source=SourceConfig("imx500", fps=200), max_frames=6, on_event=events.append
    ) as stream:
        for result in stream:
            cameras.extend(c for c in cam.OPEN.values() if c not in cameras)
            assert result.predictions
    kinds = [e.kind for e in events]
    assert "source-lost" in kinds and "source-reopened" in kinds and stream.stats().reconnects == 1
    opened = [e for e in cam.EVENTS if e.startswith(("IMX500", "Picamera2", "close"))]
    assert opened == [
        "IMX500(network.rpk) -> camera 0",
        "Picamera2(0)",
        "close(0)",
        "IMX500(network.rpk) -> camera 0",
        "Picamera2(0)",
        "close(0)",
    ]
    assert cameras and all(c._held == 0 for c in cameras)  # each request went back to the camera


def test_no_outputs_at_all_is_a_camera_error_that_says_why(cam, coral, tmp_path):
    run = make_run(tmp_path / "run", coral, not_ready_frames=10**9)
    source = IMX500Source(run / "imx500" / "network.rpk", fps=200, first_output_timeout=0.3)
    source.open()
    try:
        with pytest.raises(CameraError, match="without the network's outputs: network.rpk did not start"):
            for _ in range(1000):
                source.read()
                assert source.frame_outputs() is not None
    finally:
        source.close()
    assert source.frames_not_ready > 0 and cam.OPEN == {}


def test_frames_between_outputs_are_skipped_not_classified(cam, coral, tmp_path):
    """An inference rate under the frame rate: only every second frame carries outputs."""
    import edgecls

    run = make_run(tmp_path / "run", coral, not_ready_frames=2, every=2)
    with edgecls.Stream(
        str(run), source=SourceConfig("imx500", fps=200), classifier=ClassifierConfig(top_k=4), max_frames=5
    ) as stream:
        results = list(stream)
    assert len(results) == 5
    for r in results:
        by_index = {p.index: p.score for p in r.predictions}
        assert [by_index[i] for i in range(4)] == pytest.approx(expected_scores(r.frame, not_ready=2, every=2))


# -- the command line: results, smoothing, a jsonl sink; the errors ----------------------------------------------------


def test_edgecls_run_on_the_ai_camera(coral, tmp_path):
    """As a user runs it: --json on stdout and a jsonl sink, smoothing, labels from the bundle. picamera2 prints on
    stdout when the firmware progress cannot be read (as for a service user); the results stay clean JSON."""
    run = make_run(tmp_path / "run", coral, progress="none", not_ready_frames=3)
    events = tmp_path / "events.txt"
    done = edgecls(
        "run",
        str(run),
        "--source",
        "imx500",
        "--json",
        "--top-k",
        "4",
        "--max-frames",
        "9",
        "--ema",
        "0.5",
        "--hold",
        "2",
        "--sink",
        f"jsonl:{tmp_path / 'out.jsonl'}",
        env={"PICAMERA2_STANDIN_EVENTS": str(events)},
    )
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]  # every line a result
    assert len(printed) == 9
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == printed
    smoother = Smoother(Smoothing(alpha=0.5, hold=2), labels=LABELS)
    for record in printed:
        scores = np.zeros(4)
        for p in record["predictions"]:
            scores[p["index"]] = p["score"]
            assert p["label"] == LABELS[p["index"]]
        assert any(np.allclose(scores, np.array(o) / 256, atol=1e-6) for o in OUTPUTS)  # JSON keeps 6 decimals
        decision = smoother.update(scores)  # the same smoothing as any source's
        assert (record["decision"]["label"], record["decision"]["changed"]) == (decision.label, decision.changed)
        assert record["latency_ms"]["invoke"] == 5.2 and record["latency_ms"]["preprocess"] == 1.3
    lines = done.stderr.splitlines()
    assert any(line.startswith("source-progress: imx500:") and "needs root" in line for line in lines)
    assert lines[-1].startswith("done: 9 frames") and "invoke 5.2/5.2" in lines[-1]
    assert "error" not in done.stderr
    assert events.read_text().splitlines()[:3] == [
        "IMX500(network.rpk) -> camera 0",
        f"roi{FULL_SENSOR}",
        "Picamera2(0)",
    ]


def test_edgecls_run_with_the_ai_camera_profile(coral, tmp_path):
    run = make_run(tmp_path / "run", coral, resize="squash")
    events = tmp_path / "events.txt"
    done = edgecls(
        "run",
        str(run / "model.tflite"),
        "--profile",
        "rpi5-ai-camera",
        "--max-frames",
        "2",
        "--quiet",
        env={"PICAMERA2_STANDIN_EVENTS": str(events)},
    )
    assert done.returncode == 0, done.stderr
    log = events.read_text().splitlines()
    assert "configure(main=(1024, 768) RGB888, buffers=8, controls={'FrameRate': 30.0})" in log
    assert f"roi{FULL_SENSOR}" in log[log.index("start(0)") :]  # squash: the whole sensor


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    return lines[0]


def test_without_picamera2_it_is_one_error_line_with_the_fix(coral, tmp_path):
    run = make_run(tmp_path / "run", coral)
    line = one_error_line(edgecls("run", str(run), "--source", "imx500", standin=False))
    assert "needs picamera2" in line and "sudo apt install python3-picamera2 imx500-all" in line


def test_without_an_ai_camera_it_is_one_error_line(coral, tmp_path):
    run = make_run(tmp_path / "run", coral)
    line = one_error_line(edgecls("run", str(run), "--source", "imx500", env={"PICAMERA2_STANDIN_CAMERAS": "imx708"}))
    assert "no AI Camera (IMX500) found" in line and "rpicam-hello --list-cameras" in line


def test_without_an_rpk_it_is_one_error_line_naming_the_package_to_make_it_from(coral, tmp_path):
    run = make_run(tmp_path / "run", coral, rpk=False)
    line = one_error_line(edgecls("run", str(run), "--source", "imx500"))
    assert f"imx500-package -i {run / 'imx500' / 'packerOut.zip'} -o {run / 'imx500'}" in line
    assert "--source imx500:PATH.rpk" in line
    missing = one_error_line(edgecls("run", str(run), "--source", f"imx500:{tmp_path / 'nope.rpk'}"))
    assert f"IMX500 network not found: {tmp_path / 'nope.rpk'}" in missing


def test_cpu_interpreter_options_are_refused_not_ignored(coral, tmp_path):
    run = make_run(tmp_path / "run", coral)
    line = one_error_line(edgecls("run", str(run), "--source", "imx500", "--delegate", "edgetpu", "--threads", "2"))
    assert "--threads, --delegate set the TFLite interpreter on the CPU" in line


def test_labels_that_do_not_fit_the_network_end_the_stream_with_one_error(coral, tmp_path):
    run = make_run(tmp_path / "run", coral, labels=["daisy", "rose", "tulip"])
    done = edgecls("run", str(run), "--source", "imx500", "--max-frames", "3", "--quiet")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: labels from {run / 'imx500' / 'labels.txt'} have 3 entries but the IMX500 network "
        f"{run / 'imx500' / 'network.rpk'} outputs 4 scores; use the labels.txt made with this network (--labels)"
    )


def test_a_network_that_is_not_a_classifier_is_refused(cam, coral, tmp_path):
    import edgecls

    detector = make_run(tmp_path / "det", coral, extra_tensors=3)
    with (
        edgecls.Stream(str(detector), source=SourceConfig("imx500", fps=200), max_frames=2) as stream,
        pytest.raises(NotAClassifierError, match=r"it has 4 output tensors .* a classifier has one"),
    ):
        list(stream)
    task = make_run(tmp_path / "task", coral, intrinsics={"task": "object detection"})
    with pytest.raises(NotAClassifierError, match="network intrinsics say the task is 'object detection'"):
        edgecls.Stream(str(task), source="imx500", max_frames=1).start()
    assert cam.OPEN == {}


def test_networks_and_sources_that_do_not_go_together(cam, coral, tmp_path):
    import edgecls
    from edgecls.live.sources import DemoSource, parse_source

    run = make_run(tmp_path / "run", coral)
    with pytest.raises(ConfigError, match="not the TFLite model"):
        edgecls.Stream(edgecls.Classifier(coral / "mobilenet_v1_0.25_128_quant.tflite"), source="imx500")
    with pytest.raises(ConfigError, match="runs on the AI Camera's sensor; its source is imx500"):
        edgecls.Stream(str(run / "imx500" / "network.rpk"), source="imx500").classifier.make_source("demo")
    with pytest.raises(ConfigError, match="do not go together"):
        edgecls.Stream(SensorClassifier.open(run), source=DemoSource(fps=0))
    with pytest.raises(ConfigError, match="comes with its classifier"):
        parse_source("imx500")
    with pytest.raises(ModelError, match="runs on the AI Camera's sensor"):
        SensorClassifier.open(run).classify(np.zeros((8, 8, 3), np.uint8))


# -- finding the network, its labels and its crop -----------------------------------------------------------------------


def test_the_network_is_found_from_the_run_its_model_or_the_rpk(coral, tmp_path):
    run = make_run(tmp_path / "run", coral, resize="letterbox")
    for given in (run, run / "model.tflite", run / "imx500" / "network.rpk"):
        net = find_network(given)
        assert net.rpk == run / "imx500" / "network.rpk" and net.labels == tuple(LABELS)
        assert net.labels_source == str(run / "imx500" / "labels.txt")
        assert net.resize == "letterbox" and net.activation == "probabilities"
    other = rpk_module().write_rpk(tmp_path / "elsewhere" / "other.rpk")
    assert find_network(run, source=f"imx500:{other}").rpk == other
    (run / "imx500" / "labels.txt").unlink()  # then the manifest's
    assert find_network(run).labels is None
    run = make_run(tmp_path / "run2", coral, labels=None, manifest_labels=["m0", "m1", "m2", "m3"])
    assert find_network(run).labels == ("m0", "m1", "m2", "m3")
    assert find_network(run, labels=["a", "b", "c", "d"]).labels_source == "labels argument"
    (run / "imx500" / "network.rpk").write_bytes(b"")
    with pytest.raises(ModelError, match="is empty; make it again with imx500-package"):
        find_network(run)
    (run / "imx500" / "network.rpk").unlink()
    os.mkfifo(run / "imx500" / "network.rpk")  # a reader would block on it for ever
    with pytest.raises(ModelError, match="is not a regular file"):
        find_network(run)
    (run / "imx500" / "network.rpk").unlink()
    (run / "imx500" / "network.rpk").symlink_to(run / "imx500" / "network.rpk")  # a loop
    with pytest.raises(ModelError, match=r"cannot read the IMX500 network .* \(a symlink loop\)"):
        find_network(run)


@pytest.mark.parametrize(
    ("resize", "intrinsics", "crop"),
    [
        ("squash", None, "full"),
        ("center-crop", None, "center"),
        ("letterbox", None, "center"),
        (None, {"task": "classification", "input_aspect_ratio": {"width": 1, "height": 1}}, "center"),
        (None, {"task": "classification"}, "full"),
    ],
)
def test_the_sensor_crop_follows_the_training_resize_mode(cam, coral, tmp_path, resize, intrinsics, crop):
    run = make_run(tmp_path / "run", coral, resize=resize, intrinsics=intrinsics)
    clf = SensorClassifier.open(run)
    source = clf.make_source(fps=200)
    source.open()
    preserve = source._imx500.network_intrinsics.preserve_aspect_ratio if intrinsics else None
    source.close()
    assert crop_for(resize, preserve) == crop
    assert source.roi == (SQUARE_CROP if crop == "center" else FULL_SENSOR)
    assert cam.EVENTS[cam.EVENTS.index("start(0)") + 1] == f"roi{source.roi}"  # what the sensor was told


def test_crop_geometry():
    assert roi_for("center", (224, 224)) == SQUARE_CROP
    assert roi_for("center", (320, 240)) == (1, 0, 4053, 3040)  # 4:3 is (almost) the sensor's own
    assert roi_for("center", (160, 320)) == (1268, 0, 1520, 3040)
    assert roi_for("full", (160, 320)) == FULL_SENSOR
    with pytest.raises(ConfigError, match="resize mode 'stretch'"):
        crop_for("stretch")


def test_labels_that_do_not_fit_are_a_labels_error(cam, coral, tmp_path):
    import edgecls

    run = make_run(tmp_path / "run", coral, labels=["a", "b"])
    with (
        edgecls.Stream(str(run), source=SourceConfig("imx500", fps=200), max_frames=1) as stream,
        pytest.raises(LabelsError, match="have 2 entries but the IMX500 network"),
    ):
        list(stream)


def test_without_labels_in_the_run_the_networks_intrinsics_give_them(cam, coral, tmp_path):
    import edgecls

    intrinsics = {"task": "classification", "classes": {"labels": ["w", "x", "y", "z"]}}
    run = make_run(tmp_path / "run", coral, labels=None, intrinsics=intrinsics)
    with edgecls.Stream(str(run), source=SourceConfig("imx500", fps=200), max_frames=2) as stream:
        results = list(stream)
    assert all(r.predictions[0].label in {"w", "x", "y"} and r.decision.label in {"w", "x", "y"} for r in results)
    assert stream.classifier.labels.source.endswith("(network intrinsics)")


def test_a_two_class_sigmoid_network_scores_both_classes(cam, coral, tmp_path):
    import edgecls

    run = make_run(tmp_path / "run", coral, labels=["cat", "dog"], outputs=[[192]], not_ready_frames=0)
    with edgecls.Stream(
        str(run), source=SourceConfig("imx500", fps=200), max_frames=1, classifier=ClassifierConfig(top_k=2)
    ) as stream:
        (result,) = list(stream)
    assert [(p.label, p.score) for p in result.predictions] == [("dog", 0.75), ("cat", 0.25)]


def test_importing_edgecls_never_imports_picamera2():
    code = (
        "import sys, edgecls, edgecls.live.stream, edgecls.live.imx500, edgecls.cli.app; "
        "assert not any(m.startswith('picamera2') for m in sys.modules), sorted(sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(STANDIN)}  # even where picamera2 is importable
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


# -- profiles ---------------------------------------------------------------------------------------------------------


def test_the_ai_camera_profiles_reach_the_source(coral, tmp_path):
    from edgecls.device.profiles import load_profile

    run = make_run(tmp_path / "run", coral)
    for name, size, buffers in (("rpi5-ai-camera", (1024, 768), 8), ("rpi-zero-2w-ai-camera", (640, 480), 4)):
        profile = load_profile(name)
        assert profile.camera["source"] == "imx500" and profile.runtime == {}
        assert any(e["line"] == "camera_auto_detect=1" for e in profile.boot_lines)
        camera = profile.source_config()
        source = SensorClassifier.open(run).make_source(
            str(camera.spec), fps=camera.fps, picamera=camera.picamera.kwargs() if camera.picamera else None
        )
        assert (source.main_size, source.buffer_count, source.main_format) == (size, buffers, "RGB888")
        assert source.fps == profile.camera["fps"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("lores_size = [320, 240]", "camera.lores_size only apply to a picam source (the AI Camera's network"),
        ("width = 640", "camera source 'imx500' takes camera.main_size"),
        ('main_format = "YUV420"', "main_format is one of the RGB formats"),
    ],
)
def test_ai_camera_profile_mistakes_are_precise_errors(edit, message):
    from edgecls.device.profiles import parse_profile

    text = f'name = "x"\ndescription = "x"\nboard = "x"\n[camera]\nsource = "imx500"\n{edit}\n[runtime]\n'
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_profile(text, origin="x.toml")
    with pytest.raises(ConfigError, match=r"runtime.threads sets the TFLite interpreter on the CPU"):
        parse_profile(text.replace(edit, "") + "threads = 2\n", origin="x.toml")


# -- deploy: the bundle, and install.sh's plan (tests/emulated_pi.py runs it on an emulated Raspberry Pi OS) ----------


def fake_bin(folder: Path, **scripts: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def ai_camera_bundle(run: Path, tmp_path: Path, profile: str = "rpi5-ai-camera") -> Path:
    import tarfile

    from edgecls.device.deploy import build_bundle
    from edgecls.device.profiles import load_profile

    out = tmp_path / "ai.tar.gz"
    build_bundle(run, load_profile(profile), out, pip_spec="edgecls[camera]", sinks=["jsonl:results.jsonl"])
    with tarfile.open(out, "r:gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    return tmp_path / "x" / f"edgecls-{profile}"


def test_the_ai_camera_bundle_carries_the_package_and_the_service_runs_the_rpk(coral, tmp_path):
    run = make_run(tmp_path / "run", coral)
    root = ai_camera_bundle(run, tmp_path)
    assert (root / "imx500" / "packerOut.zip").read_bytes() == (run / "imx500" / "packerOut.zip").read_bytes()
    assert (root / "imx500" / "labels.txt").read_text().splitlines() == LABELS
    assert not (root / "imx500" / "network.rpk").exists()  # made on the device, by imx500-package
    sums = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=root, capture_output=True, text=True, check=False
    )
    assert sums.returncode == 0 and "imx500/packerOut.zip: OK" in sums.stdout
    unit = (root / "edgecls.service").read_text()
    assert (
        "ExecStart=/opt/edgecls/venv/bin/edgecls run /opt/edgecls/model.tflite --profile /opt/edgecls/profile.toml"
        " --source imx500:/opt/edgecls/imx500/network.rpk --labels /opt/edgecls/imx500/labels.txt"
    ) in unit
    assert "imx500-package" in (root / "README.txt").read_text()


def test_an_ai_camera_bundle_needs_the_runs_imx500_package(coral, tmp_path):
    from edgecls.device.deploy import build_bundle
    from edgecls.device.profiles import load_profile

    run = make_run(tmp_path / "run", coral)
    (run / "imx500" / "packerOut.zip").unlink()
    with pytest.raises(ConfigError, match=r"packerOut.zip is missing: make it with edgecls export imx500"):
        build_bundle(run, load_profile("rpi5-ai-camera"), tmp_path / "b.tar.gz", pip_spec="edgecls")
    assert not (tmp_path / "b.tar.gz").exists()


def test_install_plans_the_ai_camera_packages_and_the_rpk_on_a_pi(coral, tmp_path):
    root = ai_camera_bundle(make_run(tmp_path / "run", coral), tmp_path)
    no_picamera = 'case "$*" in *picamera2*) exit 1;; esac\nexec "$REAL_PYTHON" "$@"\n'
    plans = {}
    for state, dpkg in (("fresh", "exit 1\n"), ("installed", "printf 'install ok installed'\n")):
        env = fake_bin(tmp_path / f"bin-{state}", uname="echo aarch64\n", python3=no_picamera, **{"dpkg-query": dpkg})
        env["REAL_PYTHON"] = sys.executable
        done = subprocess.run(
            ["bash", str(root / "install.sh"), "--dry-run", "--no-start"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        plans[state] = done.stdout
    fresh = plans["fresh"].splitlines()
    steps = [line for line in fresh if line.startswith("+ ")]
    assert "+ apt-get install -y python3-picamera2" in steps and steps.count("+ apt-get update") == 1
    assert "+ apt-get install -y imx500-all imx500-tools" in steps
    package = "+ imx500-package -i /opt/edgecls/imx500/packerOut.zip -o /opt/edgecls/imx500/.package.XXXXXX"
    assert (
        steps.index("+ install -d -m 755 /opt/edgecls/imx500")
        < steps.index(f"+ install -m 644 {root}/imx500/packerOut.zip /opt/edgecls/imx500/packerOut.zip")
        < steps.index(package)
    )
    assert steps[steps.index(package) + 1 : steps.index(package) + 3] == [
        "+ install -m 644 /opt/edgecls/imx500/.package.XXXXXX/network.rpk /opt/edgecls/imx500/network.rpk.new",
        "+ mv -f /opt/edgecls/imx500/network.rpk.new /opt/edgecls/imx500/network.rpk",
    ]
    assert "imx500-all imx500-tools" not in plans["installed"] and package in plans["installed"]


def test_install_refuses_the_ai_camera_off_a_pi(coral, tmp_path):
    root = ai_camera_bundle(make_run(tmp_path / "run", coral), tmp_path, profile="rpi-zero-2w-ai-camera")
    env = fake_bin(tmp_path / "bin", uname="echo x86_64\n")
    done = subprocess.run(
        ["bash", str(root / "install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "exist for Raspberry Pi OS on a Raspberry Pi only; this is x86_64" in done.stderr
    assert "+ " not in done.stdout  # before any step


def test_install_makes_the_rpk_once_per_package_and_replaces_it_whole(coral, tmp_path):
    """install.sh's packaging step itself, run (not planned) with a stand-in imx500-package in a folder of the
    test's: the .rpk is made, a second run leaves it (the package is the same), a new package replaces it, and an
    imx500-package that fails keeps the old .rpk and leaves no work folder. (The whole install.sh runs as root on the
    emulated Raspberry Pi OS, tests/emulated_pi.py.)"""
    run = make_run(tmp_path / "run", coral, rpk=False)
    root = ai_camera_bundle(run, tmp_path)
    text = (root / "install.sh").read_text()
    helpers = text[text.index("say() {") : text.index("systemd_running()")]
    step = re.search(r"\n(# ---- the AI Camera's network.*?\nfi\n)", text, re.DOTALL).group(1)
    prefix = tmp_path / "opt"
    (prefix / "imx500").mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    tool = (
        'echo "$*" >> "$CALLS"\n[ -z "$FAIL" ] || { echo "imx500-package: failed" >&2; exit 3; }\n'
        'while getopts "i:o:" o; do case "$o" in i) IN="$OPTARG";; o) OUT="$OPTARG";; esac; done\n'
        f'exec "{sys.executable}" -c "import sys, standin_rpk; standin_rpk.package(sys.argv[1], sys.argv[2])" '
        '"$IN" "$OUT"\n'
    )
    env = fake_bin(tmp_path / "bin", **{"imx500-package": tool})
    env.update(PYTHONPATH=str(STANDIN), CALLS=str(calls))
    script = tmp_path / "step.sh"
    script.write_text(f"set -euo pipefail\nDRY_RUN=0\nIMX500=1\nHERE={root}\nPREFIX={prefix}\n{helpers}{step}")

    def install(package: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        (root / "imx500" / "packerOut.zip").write_bytes(package.read_bytes())  # what the bundle brings
        (prefix / "imx500" / "packerOut.zip").write_bytes(package.read_bytes())  # what install.sh put in place
        return subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, env={**env, **extra}, timeout=120, check=False
        )

    rpk = prefix / "imx500" / "network.rpk"
    first = install(run / "imx500" / "packerOut.zip")
    assert first.returncode == 0, first.stderr
    assert rpk_module().read_rpk(rpk)["outputs"] == OUTPUTS and oct(rpk.stat().st_mode)[-3:] == "644"
    again = install(run / "imx500" / "packerOut.zip")
    assert again.returncode == 0 and "is up to date" in again.stdout and "+ imx500-package" not in again.stdout
    assert len(calls.read_text().splitlines()) == 1
    other = rpk_module().write_package(tmp_path / "other.zip", outputs=[[1, 2, 3, 250]])
    assert install(other).returncode == 0 and rpk_module().read_rpk(rpk)["outputs"] == [[1, 2, 3, 250]]
    failed = install(rpk_module().write_package(tmp_path / "third.zip", outputs=[[9, 9, 9, 9]]), FAIL="1")
    assert failed.returncode == 1 and "imx500-package could not make the network" in failed.stderr
    assert rpk_module().read_rpk(rpk)["outputs"] == [[1, 2, 3, 250]]  # the old network, whole
    assert sorted(p.name for p in (prefix / "imx500").iterdir()) == [
        "network.rpk",
        "network.rpk.sha256",
        "packerOut.zip",
    ]
    assert len(calls.read_text().splitlines()) == 3
