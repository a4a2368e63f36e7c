"""convert against interruptions and odd input: the output folder holds one whole run (old or new, never a mix),
labels round-trip whatever the class names, an Edge TPU build must belong to its CPU model, the gate checks
agreement and says when the test split is too small, and exit codes tell a failed gate from an error. SIGTERM and
SIGHUP end a run with one line and no staging folder; a killed run's staging folder is removed by the next run, a
live one's never; a disk without room stops a run before training, and a write that fails on a real full or
read-only file system is one error line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, convert, ctrl_c_when, one_error_line, tensorflow_or_skip
from conftest import TINY as PLUMBING
from PIL import Image

# Enough training that the colour classes are learned (a model no better than guessing fails the gate).
TINY = [*PLUMBING, "--epochs", "10", "--learning-rate", "0.01", "--batch-size", "4"]

pytestmark = [pytest.mark.usefixtures("_tf"), pytest.mark.slow]  # trains or converts real models


@pytest.fixture(scope="module")
def _tf():
    tensorflow_or_skip()


def dataset(root: Path, names: tuple[str, ...], per_class: int = 10) -> Path:
    """Classes told apart by their dominant colour channel (as many classes as names, up to three)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            pixels[..., c % 3] += 160
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A finished 3-class run, with a stale Edge TPU build and a checkpoint left beside it."""
    root = tmp_path_factory.mktemp("old")
    data = dataset(root / "data3", ("circle", "square", "stripes"))
    out = root / "run"
    result = convert(data, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return data, out


def fresh_copy(old_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(old_run[1], out)
    return out


def test_a_finished_run_is_refused_without_overwrite_and_other_folders_always(old_run, tmp_path):
    out = fresh_copy(old_run, tmp_path)
    before = digest(out)
    assert "already holds a finished run; pass --overwrite" in one_error_line(convert(old_run[0], "--out", out, *TINY))
    assert digest(out) == before
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not ours")
    for extra in ([], ["--overwrite"]):
        line = one_error_line(convert(old_run[0], "--out", mine, *TINY, *extra))
        assert "holds other files, not an edgecls run" in line
    assert (mine / "holiday.jpg").read_bytes() == b"not ours"


def test_overwrite_replaces_the_whole_run_and_no_stale_file_survives(old_run, tmp_path):
    out = fresh_copy(old_run, tmp_path)
    (out / "model_edgetpu.tflite").write_bytes((out / "model.tflite").read_bytes())  # an old Edge TPU build
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "best-train.weights.h5").write_bytes(b"old")
    data4 = dataset(tmp_path / "data4", ("circle", "square", "stripes", "star"))
    result = convert(data4, "--out", out, *TINY, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "model_edgetpu.tflite").exists() and not (out / "checkpoints").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["circle", "square", "star", "stripes"]
    assert (out / "labels.txt").read_text().split() == report["classes"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no staging folder left


def test_an_interrupt_while_writing_the_report_leaves_the_old_run_whole(old_run, tmp_path, monkeypatch):
    """Ctrl-C as the report is written (in-process, at a known point), then as a real process during the export."""
    from edgecls.convert import report as reporting

    out = fresh_copy(old_run, tmp_path)
    before = digest(out)
    data4 = dataset(tmp_path / "data4", ("circle", "square", "stripes", "star"))

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(reporting, "plot_curves", interrupted)
        result = convert(data4, "--out", out, *TINY, "--overwrite")
    assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
    assert digest(out) == before  # the old 3-class run, every file of it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]

    code, output = ctrl_c_when(["convert", data4, "--out", out, *TINY, "--overwrite"], lambda line: "exporting" in line)
    assert "Traceback" not in output
    if code == 130:
        assert digest(out) == before
    else:  # the signal came after the swap: then the folder is the whole new run
        assert code == 0 and json.loads((out / "report.json").read_text())["classes"][2] == "star"


def test_class_names_that_look_like_ids_round_trip(tmp_path):
    """Folders named `1 apple`, `2 banana`: labels.txt reads back as those names (it used to read as id lines
    and fail), and `classify --labels labels.txt` and deploy accept it."""
    from edgecls import Classifier
    from edgecls.model.labels import read_labels_file

    data = dataset(tmp_path / "fruit", ("1 apple", "2 banana"))
    out = tmp_path / "run"
    result = convert(data, "--out", out, *TINY)
    assert result.exit_code in (0, 3), result.output  # the gate's verdict does not matter here: the files do
    labels = out / "labels.txt"
    with Classifier(out / "model.tflite", labels=labels) as clf:
        assert clf.labels.names == ("1 apple", "2 banana") or list(clf.labels.names) == ["1 apple", "2 banana"]
    parsed = read_labels_file(labels)
    assert list(parsed.values() if isinstance(parsed, dict) else parsed) == ["1 apple", "2 banana"]
    with Classifier(out / "model.tflite") as clf:  # from the embedded metadata
        assert list(clf.labels.names) == ["1 apple", "2 banana"]


def test_an_edge_tpu_build_of_another_model_is_refused(coral, tmp_path):
    from edgecls import Classifier
    from edgecls.errors import ModelError

    shutil.copy(coral / "mobilenet_v1_0.5_160_quant.tflite", tmp_path / "model.tflite")
    shutil.copy(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", tmp_path / "model_edgetpu.tflite")
    with pytest.raises(ModelError, match="model_edgetpu.tflite does not belong to .*inputs and outputs differ"):
        Classifier(tmp_path / "model.tflite", delegate="edgetpu")


def test_the_gate_wants_agreement_and_knows_what_one_image_is_worth(old_run):
    from edgecls.convert.gate import gate_failures
    from edgecls.convert.options import ConvertOptions

    metrics = {
        "drop_points": 0.0,
        "agreement": 0.0,
        "float": {"top1": 0.4},
    }  # a 1-epoch model: same top-1, never agreeing
    failures = gate_failures(metrics, ConvertOptions(out_dir=Path("x")))
    assert (
        len(failures) == 1
        and "agree on the top-1 class of 0.0%" in failures[0]
        and "--min-agreement 90%" in failures[0]
    )
    assert not gate_failures({**metrics, "agreement": 0.95}, ConvertOptions(out_dir=Path("x")))
    report = json.loads((old_run[1] / "report.json").read_text())
    assert report["test_images"] == 6 and report["points_per_image"] == pytest.approx(16.667, abs=0.01)
    first = (old_run[1] / "report.md").read_text().splitlines()[2]
    assert (
        "the test split has 6 images, so each image the model gets right or wrong moves top-1 by 16.67 points" in first
    )
    # TINY allows a 100-point drop: measurable even on 6 images (the only warning is the advice on so few images)
    assert not [w for w in report["warnings"] if "one image is" in w]
    assert [w for w in report["warnings"] if "smallest class has" in w]


def test_ctrl_c_inside_the_tflite_converter_is_an_interruption(monkeypatch):
    from edgecls.convert.tflite_export import run_converter

    class Converter:
        def convert(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("ConverterError: <unknown>:0: error: KeyboardInterrupt")

    with pytest.raises(KeyboardInterrupt):
        run_converter(Converter(), "int8")


# --- SIGTERM, SIGHUP and SIGKILL ------------------------------------------------------------------------------

LONG = [
    "--input-size",
    "32",
    "--width",
    "8",
    "--depth",
    "2",
    "--epochs",
    "500",
    "--patience",
    "500",
    "--no-baseline",
    "--batch-size",
    "4",
    "--min-agreement",
    "0",
    "--max-drop",
    "100",
]  # trains until it is stopped


# `python -m edgecls` with SIGTERM and SIGHUP at their defaults, whatever the suite inherited (nohup ignores SIGHUP).
AS_FROM_A_TERMINAL = """
import runpy, signal, sys
for name in ("SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_DFL)
sys.argv = ["edgecls", *sys.argv[1:]]
runpy.run_module("edgecls", run_name="__main__", alter_sys=True)
"""


class Convert:
    """`python -m edgecls convert ARGS...` as a real process; its stderr (the progress and the error line) is read
    by a thread, so that waiting for a line has a deadline."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", AS_FROM_A_TERMINAL, "convert", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, text: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._new.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if text in line:
                return
        raise AssertionError(f"no {text!r} line (exit {self.proc.poll()}):\n" + "\n".join(self.lines[-30:]))

    def end(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def stages(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(".run.new-"))


def test_sigkill_leftovers_go_with_the_next_run_live_ones_stay_and_sigterm_is_one_line(tmp_path):
    """A SIGKILLed run leaves its staging folder (nothing can clean up); the next run into the same --out removes it
    and keeps the one of a run still going beside it (stopped with SIGSTOP meanwhile, off the CPU); SIGTERM then
    ends that run with exit 143, one error line and its staging folder removed, the finished run untouched."""
    data = dataset(tmp_path / "data", ("circle", "square"))
    out = tmp_path / "run"
    killed, live = Convert(data, "--out", out, *LONG), None
    try:
        killed.wait_for("train   1/500")
        [stale] = stages(tmp_path)
        assert (stale / ".edgecls-owner.json").is_file()
        killed.kill()
        assert stages(tmp_path) == [stale]
        live = Convert(data, "--out", out, *LONG)
        live.wait_for("train   1/500")
        [mine] = [p for p in stages(tmp_path) if p != stale]
        live.proc.send_signal(signal.SIGSTOP)
        result = convert(data, "--out", out, *PLUMBING)
        assert result.exit_code == 0, result.output
        assert stages(tmp_path) == [mine]
        finished = digest(out)
        live.proc.send_signal(signal.SIGTERM)
        live.proc.send_signal(signal.SIGCONT)
        code = live.end()
        errors = [line for line in live.lines if line.startswith("error: ")]
        assert code == 143 and len(errors) == 1, "\n".join(live.lines[-30:])
        assert errors[0].startswith(f"error: terminated by SIGTERM; {out} keeps a whole run or none")
        assert not [line for line in live.lines if "Traceback" in line]
        assert stages(tmp_path) == [] and digest(out) == finished
    finally:
        killed.kill()
        if live is not None:
            live.kill()


def test_sighup_ends_a_run_cleanly_and_an_inherited_ignore_is_kept(old_run, tmp_path, monkeypatch):
    """SIGHUP as the report is written (in-process, at a known point): exit 129, one line, the old run whole; with
    SIGHUP ignored before the command started (nohup), the same signal changes nothing and the run finishes."""
    from edgecls.convert import report as reporting

    out = fresh_copy(old_run, tmp_path)
    before = digest(out)
    real = reporting.plot_curves

    def hang_up(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGHUP)
        return real(*args, **kwargs)

    monkeypatch.setattr(reporting, "plot_curves", hang_up)
    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as from a terminal, whatever started the suite
    try:
        line = one_error_line(convert(old_run[0], "--out", out, *PLUMBING, "--overwrite"), code=129)
        assert line.startswith("error: terminated by SIGHUP")
        assert digest(out) == before and stages(tmp_path) == []
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # the command put the disposition back
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        result = convert(old_run[0], "--out", out, *PLUMBING, "--overwrite")
    finally:
        signal.signal(signal.SIGHUP, inherited)
    assert result.exit_code == 0, result.output
    assert digest(out) != before and stages(tmp_path) == []


def owner(folder: Path, **record: object) -> Path:
    folder.mkdir()
    (folder / ".edgecls-owner.json").write_text(json.dumps({"by": "edgecls convert", **record}))
    return folder


def test_only_staging_folders_of_ended_runs_that_are_ours_are_removed(tmp_path):
    from edgecls.convert import staging

    me = staging._me()
    ended = subprocess.Popen(["true"])
    ended.wait()
    alive = subprocess.Popen(["sleep", "60"])
    zombie = subprocess.Popen(["sleep", "60"])
    outside = tmp_path / "elsewhere"
    try:
        zombie.kill()  # not waited for: a zombie until the finally
        time.sleep(0.2)
        live = {**me, "pid": alive.pid, "started": staging.process_start(alive.pid)}
        gone = {
            "ended": owner(tmp_path / ".run.new-ended000", **{**me, "pid": ended.pid}),
            "reused": owner(tmp_path / ".run.new-reused00", **{**live, "started": "1"}),
            "zombie": owner(
                tmp_path / ".run.new-zombie00",
                **{**me, "pid": zombie.pid, "started": staging.process_start(zombie.pid)},
            ),
            "rebooted": owner(tmp_path / ".run.new-rebooted", **{**live, "boot": "another-boot"}),
        }
        kept = {
            "live": owner(tmp_path / ".run.new-live0000", **live),
            "me": owner(tmp_path / ".run.new-me000000", **me),
            "other host": owner(tmp_path / ".run.new-otherhst", **{**me, "pid": ended.pid, "host": "elsewhere"}),
            "other container": owner(tmp_path / ".run.new-othercnt", **{**me, "pid": ended.pid, "pidns": "pid:[1]"}),
            "no record": tmp_path / ".run.new-norecord",
            "not ours": owner(tmp_path / ".run.new-notours0", pid=ended.pid, host=me["host"], by="someone"),
            "another --out": owner(tmp_path / ".rum.new-ended000", **{**me, "pid": ended.pid}),
            "not the pattern": owner(tmp_path / ".run.new-ended0000", **{**me, "pid": ended.pid}),
            "linked record": tmp_path / ".run.new-linkedrc",
            "a link": tmp_path / ".run.new-alink000",
            "a file": tmp_path / ".run.new-afile000",
        }
        kept["no record"].mkdir()
        owner(outside, **{**me, "pid": ended.pid})
        kept["linked record"].mkdir()
        (kept["linked record"] / ".edgecls-owner.json").symlink_to(outside / ".edgecls-owner.json")
        kept["a link"].symlink_to(outside, target_is_directory=True)
        kept["a file"].write_text(json.dumps({**me, "pid": ended.pid}))
        removed = staging.remove_stale_stages(tmp_path / "run")
        assert sorted(removed) == sorted(gone.values())
        assert not [name for name, path in gone.items() if os.path.lexists(path)]
        assert [name for name, path in kept.items() if not os.path.lexists(path)] == []
        assert (outside / ".edgecls-owner.json").is_file()
    finally:
        for proc in (alive, zombie):
            proc.kill()
            proc.wait()


# --- disk space ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str):  # type: ignore[no-untyped-def]
    """A tmpfs of ``size`` mounted at ``path``, unmounted at the end (root only: skips elsewhere)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_a_disk_without_room_stops_the_run_before_training(tmp_path, monkeypatch):
    """A disk (reported) with less room than the run needs: refused after the model is built, before training. One
    that fills up after the first epoch: refused between epochs, before the next checkpoint is written. A real 300 KB
    file system (root only): refused at once. Each is one error line and leaves nothing behind."""
    data = dataset(tmp_path / "data", ("circle", "square"))
    real = shutil.disk_usage
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1024 * 1024))
        result = convert(data, "--out", out, *PLUMBING)
    line = one_error_line(result)
    assert "this run (a model of" in line and "parameters) needs about" in line and "1.0 MiB is free" in line
    assert "training (" not in result.stderr and not out.exists() and stages(tmp_path) == []

    def filling(path):  # type: ignore[no-untyped-def]
        checkpoint = any(Path(path).glob("checkpoints/best-*.weights.h5"))
        return real(path)._replace(free=100 * 1024 if checkpoint else real(path).free)

    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", filling)
        result = convert(data, "--out", out, *PLUMBING)
    assert one_error_line(result).startswith(f"error: not enough free space in {tmp_path}: the rest of this run")
    assert "train   1/" in result.stderr and "train   2/" not in result.stderr
    assert not out.exists() and stages(tmp_path) == []

    with small_disk(tmp_path / "disk", "300k") as disk:
        line = one_error_line(convert(data, "--out", disk / "run", *PLUMBING))
        assert line.startswith(f"error: not enough free space in {disk}: a run needs about") and "KiB is free" in line
        assert os.listdir(disk) == []


# The disk fills up (or turns read-only) just before one of the run's writes: a real failed write.
FILL_FIRST = """
import os, subprocess, sys
import edgecls.convert.pipeline as pipeline, edgecls.convert.report as reporting, edgecls.convert.staging as staging
disk, point = sys.argv[1], sys.argv[2]
pipeline.check_room = staging.check_room = lambda *args, **kwargs: None  # else they stop the run before the writes
module, name = {"model.keras": (pipeline, "_save_keras"), "model.tflite": (pipeline, "write_model"),
                "report.json": (reporting, "write_json"), "plots": (reporting, "plot_confusion"),
                "read-only": (pipeline, "train")}[point]
real = getattr(module, name)
def fill_first(*args, **kwargs):
    if point == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
    else:
        room = os.statvfs(disk)
        with open(os.path.join(disk, "filler"), "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, room.f_bavail * room.f_frsize - 8192)
    return real(*args, **kwargs)
setattr(module, name, fill_first)
from edgecls.__main__ import console
sys.argv = ["edgecls", "convert", *sys.argv[3:]]
console()
"""


@pytest.mark.parametrize("point", ["model.keras", "model.tflite", "report.json", "plots", "read-only"])
def test_a_write_that_fails_on_a_real_disk_is_one_error_line(point, tmp_path):
    """ENOSPC from the Keras save, the TFLite model, the report and the plots, and EROFS from the first checkpoint
    (the file system remounted read-only as training starts): exit 1, one error line naming the reason, no
    traceback, --out never made. A read-only disk keeps the staging folder (nothing can be removed there); once it
    is writable again, the next run's clean-up removes it."""
    from edgecls.convert.staging import remove_stale_stages

    data = dataset(tmp_path / "data", ("circle", "square"))
    runner = tmp_path / "fill_first.py"
    runner.write_text(FILL_FIRST)
    with small_disk(tmp_path / "disk", "8m") as disk:
        out = disk / "run"
        done = subprocess.run(
            [sys.executable, runner, disk, point, data, "--out", out, *PLUMBING],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 1 and len(errors) == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        reason = "Read-only file system" if point == "read-only" else "No space left on device"
        assert reason in errors[0] and f"{out} is as it was" in errors[0]
        left = sorted(p.name for p in disk.iterdir())
        if point == "read-only":
            assert len(left) == 1 and left[0].startswith(".run.new-")
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            assert remove_stale_stages(out) == [disk / left[0]]
            left = sorted(p.name for p in disk.iterdir())
        assert left in ([], ["filler"])
