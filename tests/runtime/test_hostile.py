"""Hostile and odd input: models that are not classifiers, unreadable files and symlink loops in batches, huge
images, FIFOs, CLI misuse. Each ends in one `error:` line per bad item and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_opencv
from typer.testing import CliRunner

from edgecls.cli.app import app

runner = CliRunner()
MODEL = "mobilenet_v1_0.25_128_quant.tflite"


def cli(*args):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and not (
        result.exception and not isinstance(result.exception, SystemExit)
    ), result.output
    return result


@pytest.mark.parametrize(
    "kind, says",
    [
        ("segmentation", "a map per pixel (a segmentation model"),
        ("pose", "keypoints (a pose model"),
        ("sequence", "a sequence model"),
        ("detector", "it has 4 outputs"),
    ],
)
def test_models_that_are_not_classifiers_are_refused_and_still_described(non_classifiers, coral, kind, says):
    path = non_classifiers[kind]
    refused = cli("classify", path, coral / "cat.bmp")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 1 and len(errors) == 1 and "not an image classifier" in errors[0] and says in errors[0]
    run = cli("run", path, "--source", "demo", "--max-frames", "2")
    assert run.exit_code == 1 and "not an image classifier" in run.stderr
    info = cli("info", path)
    assert info.exit_code == 0 and "NOT an image classifier" in info.stdout and says in info.stdout
    facts = json.loads(cli("info", path, "--json").stdout)
    assert says in facts["not_a_classifier"] and facts["outputs"]


# -- images and batches --------------------------------------------------------------------------------------------


@pytest.fixture()
def batch(tmp_path, coral):
    """A folder of good images with a symlink loop, a FIFO and a broken link among them."""
    import shutil

    folder = tmp_path / "batch"
    (folder / "sub").mkdir(parents=True)
    for name in ("cat.bmp", "owl.jpg", "hot_dog.jpg"):
        shutil.copy(coral / name, folder / name)
    shutil.copy(coral / "cat.bmp", folder / "sub" / "secret.bmp")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "sub" / "up").symlink_to(folder)  # a directory loop: not walked in circles
    os.mkfifo(folder / "pipe.jpg")
    return folder


def test_a_batch_names_each_bad_item_once_and_classifies_the_rest(coral, batch):
    result = cli("classify", coral / MODEL, batch, "--top-k", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1
    per_item = errors[:-1]
    assert len(per_item) == 3, errors  # one line for each bad item; none for the directory loop sub/up
    for name in ("loop.jpg", "pipe.jpg", "gone.png"):
        assert sum(str(batch / name) in e for e in per_item) == 1, (name, errors)
    assert any("symlink loop" in e and "loop.jpg" in e for e in errors)
    assert any("pipe.jpg" in e and "not a regular file" in e for e in errors)
    assert any("gone.png" in e and "not found" in e for e in errors)
    assert errors[-1] == "error: 3 of 7 images failed"
    assert len(result.stdout.splitlines()) == 4  # cat, owl, hot dog, sub/secret


def test_run_over_a_folder_goes_on_past_bad_items(coral, batch):
    result = cli("run", coral / MODEL, "--source", str(batch), "--json")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 4
    assert result.stderr.count("frame-skipped:") == 3
    assert "error: 3 item(s) of the source could not be read" in result.stderr


def test_permission_denied_is_one_line_per_file(coral, batch, tmp_path):
    """A file the user may not read is named once and the rest run. As root (which reads everything) the command
    runs without the capabilities that override file permissions (util-linux setpriv), as an ordinary user would."""
    import shutil
    import subprocess
    import sys

    (batch / "sub" / "secret.bmp").chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without util-linux setpriv: cannot make a file unreadable")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    for args in (
        [
            "classify",
            str(coral / MODEL),
            str(batch / "cat.bmp"),
            str(batch / "sub" / "secret.bmp"),
            str(batch / "owl.jpg"),
        ],
        ["run", str(coral / MODEL), "--source", str(batch), "-q"],
    ):
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "edgecls", *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("secret.bmp (Permission denied)") == 1, proc.stderr
    assert proc.stderr.count("frame-skipped") == 4  # the secret, the loop, the FIFO, the broken link


def test_huge_images_are_reduced_or_refused_within_bounded_memory(coral, tmp_path):
    """A 12000x12000 PNG (a few hundred KB) is refused; a 9000x9000 JPEG is decoded at a reduced size. Measured in
    a child process: its peak memory stays far below the 2.5 GB and 1.5 GB these took before."""
    import subprocess
    import sys

    from PIL import Image

    png, jpg = tmp_path / "huge.png", tmp_path / "huge.jpg"
    Image.new("L", (12000, 12000), 7).save(png, optimize=False)
    Image.new("L", (9000, 9000), 200).save(jpg, quality=50)
    code = (
        "import sys\n"
        "from edgecls.model.classifier import Classifier\n"
        "from edgecls.errors import ImageError\n"
        f"clf = Classifier({str(coral / MODEL)!r})\n"
        f"try:\n    clf.classify({str(png)!r})\nexcept ImageError as e:\n    print('refused:', e)\n"
        f"print('jpeg:', clf.classify({str(jpg)!r}, top_k=1)[0].label)\n"
        # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork and exec)
        "print('rss_mb:', [int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "12000x12000 pixels is more than edgecls decodes" in out.stdout
    assert "jpeg:" in out.stdout
    rss = int(out.stdout.split("rss_mb:")[1])
    assert rss < 600, f"peak RSS {rss} MB"


def test_a_float_tiff_is_converted_not_black(tmp_path):
    from PIL import Image

    from edgecls.errors import ImageError
    from edgecls.model.images import read_image

    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))
    Image.fromarray(ramp, mode="F").save(tmp_path / "ramp.tif")
    rgb = read_image(tmp_path / "ramp.tif")
    assert rgb.shape == (32, 64, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and rgb[0, 32, 0] > 100
    Image.fromarray(ramp * 1000 - 500, mode="F").save(tmp_path / "wild.tif")
    with pytest.raises(ImageError, match="floating-point image with values outside"):
        read_image(tmp_path / "wild.tif")


# -- the command line ----------------------------------------------------------------------------------------------


def _unprivileged() -> list[str]:
    """A command prefix that makes root obey file permissions (util-linux setpriv drops the override capabilities)."""
    import shutil

    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without util-linux setpriv: cannot make a folder unwritable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def one_error_line(proc) -> str:  # type: ignore[no-untyped-def]
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--threads", "99999999999"], "num_threads must be between 1 and 256"),
        (["--delegate", "LIBZ"], "is not a TFLite delegate library"),
        (["--labels", "FIFO"], "is not a regular file"),
        (["--labels", "LOOP"], "a symlink loop"),
        (["--labels", "SECRET"], "Permission denied"),
    ],
)
def test_cli_misuse_is_one_error_line(coral, tmp_path, args, says):
    import ctypes.util
    import subprocess
    import sys

    fifo, loop, secret = tmp_path / "labels.fifo", tmp_path / "loop.txt", tmp_path / "secret.txt"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    secret.write_text("a\n")
    secret.chmod(0)
    libz = ctypes.util.find_library("z")
    if libz is None:
        pytest.skip("no libz to stand in for a library that is not a delegate")
    swap = {"LIBZ": libz, "FIFO": str(fifo), "LOOP": str(loop), "SECRET": str(secret)}
    args = [swap.get(a, a) for a in args]
    prefix = _unprivileged() if "SECRET" in swap and str(secret) in args else []
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "edgecls", "classify", str(coral / MODEL), str(coral / "cat.bmp"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert says in one_error_line(proc)


def test_a_preview_port_out_of_range_is_one_error_line(coral):
    result = cli("run", coral / MODEL, "--source", "demo", "--max-frames", "2", "--sink", "preview:99999")
    assert result.exit_code == 1 and "the port must be a number" in one_error_line(result)


@needs_opencv
def test_unwritable_outputs_are_one_error_line(coral, tmp_path):
    import subprocess
    import sys

    prefix = _unprivileged()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for args in (
        ["run", str(coral / MODEL), "--source", str(coral / "cat.bmp"), "-q", "--sink", f"video:{locked / 'out.avi'}"],
        ["deploy", str(coral / MODEL), "--profile", "rpi4", "--out", str(locked / "bundle.tar.gz")],
    ):
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "edgecls", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
            check=False,
        )
        assert proc.returncode == 1
        assert "Permission denied" in one_error_line(proc)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("sink", ["video:out.avi"])
def test_drawing_sinks_without_opencv_say_which_extra(coral, tmp_path, sink):
    """The base install has no OpenCV (it is the [camera] extra): the video sink says so (the dashboard does without
    it: tests/runtime/test_dashboard.py)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['cv2'] = None\n"  # what `import cv2` meets where OpenCV is not installed
        f"sys.argv = ['edgecls', 'run', {str(coral / MODEL)!r}, '--source', {str(coral / 'cat.bmp')!r}, '-q', "
        f"'--sink', {sink!r}]\n"
        "from edgecls.cli.app import main; main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert proc.returncode == 1
    assert "pip install 'edgecls[camera]'" in one_error_line(proc)


def test_bench_names_the_processor_not_the_x86_model_number():
    from edgecls.device.bench import cpu_model_from

    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 2\nmodel name\t: AMD EPYC 7B13\n"
    pi = (
        "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nHardware\t: BCM2835\n"
        "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    )
    assert cpu_model_from(x86) == "AMD EPYC 7B13"
    assert cpu_model_from(pi) == "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_model_from("model\t\t: 2\n") is None


def test_a_fifo_as_the_model_is_refused_at_once(tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "model.tflite"
    os.mkfifo(fifo)
    for command in ("info", "check"):
        proc = subprocess.run(
            [sys.executable, "-m", "edgecls", command, str(fifo)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1 and "is not a regular file" in one_error_line(proc)


def test_convert_names_links_and_fifos_among_the_training_images(tmp_path):
    pytest.importorskip("tensorflow")
    from edgecls.convert.data import list_class_folders
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    (tmp_path / "cat" / "loop.jpg").symlink_to("loop.jpg")
    os.mkfifo(tmp_path / "dog" / "pipe.png")
    classes, files, skipped = list_class_folders(tmp_path)
    assert classes == ["cat", "dog"] and all(len(v) == 1 for v in files.values())
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons == {"loop.jpg": "a symlink loop or broken link", "pipe.png": "not a regular file (a FIFO?)"}
