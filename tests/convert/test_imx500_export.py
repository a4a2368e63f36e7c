"""The host side of the Raspberry Pi AI Camera (IMX500): the toolchain's own environment (a killed install is never
trusted; no Java or no suitable Python is one error naming the fix), the refusal of layers the IMX500 does not take
before any work, the Keras 3 -> tf.keras rebuild with Rescaling as tensor ops (within 1e-5 on real images), and a real
MCT + imxconv-tf conversion through `edgecls convert --target imx500` and `edgecls export imx500`, with its parity
section in the report.

The slow tests need the toolchain's environment (created on first use: PyPI and Java 17); without them they are
skipped with the reason, and under CI=true, whose .ci/run creates it, they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI, tensorflow_or_skip
from edgecls.convert import imx500_env
from edgecls.convert.imx500_env import ensure_env, env_state, pip_event

from edgecls.errors import ConfigError, ConversionError

ROOT = Path(__file__).resolve().parents[2]


def fake_program(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


# -- the toolchain's environment ----------------------------------------------------------------------------------


def test_java_missing_or_too_old_is_one_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConversionError, match="no working `java` is on PATH.*openjdk-17-jre-headless"):
        imx500_env.check_java()
    fake_program(tmp_path / "old", "java", "echo 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    monkeypatch.setenv("PATH", str(tmp_path / "old"))
    with pytest.raises(ConversionError, match="is Java 11;.*openjdk-17-jre-headless"):
        imx500_env.check_java()
    fake_program(tmp_path / "ok", "java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2\n")
    monkeypatch.setenv("PATH", str(tmp_path / "ok"))
    assert imx500_env.check_java() == 17
    assert imx500_env.parse_java_version('java version "1.8.0_402"') == 8


def test_no_suitable_python_is_one_error_naming_the_fix(tmp_path, monkeypatch):
    python312 = fake_program(tmp_path, "python3", "echo /usr/bin/python3.12; echo 3.12.1\n")
    monkeypatch.setenv(imx500_env.PYTHON_VAR, str(python312))
    with pytest.raises(ConversionError, match=r"needs Python 3.10 or 3.11.*python3.11-venv.*EDGECLS_IMX500_PYTHON"):
        imx500_env.find_python()
    # nothing was created for it
    with pytest.raises(ConversionError, match="Python 3.10 or 3.11"):
        ensure_env(path=tmp_path / "env", pins=())
    assert not (tmp_path / "env").exists() and not list(tmp_path.glob(".env.new-*"))


def test_the_environment_lives_in_the_cache_folder_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv(imx500_env.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert imx500_env.env_dir() == tmp_path / "xdg" / "edgecls" / "imx500-env"
    monkeypatch.setenv(imx500_env.ENV_VAR, str(tmp_path / "mine"))
    assert imx500_env.env_dir() == tmp_path / "mine"


def python_311_or_310() -> Path:
    try:
        return imx500_env.find_python()[0]
    except ConversionError as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI=true: .ci/run's Python is one)")
        pytest.skip(str(exc))


def test_a_killed_install_is_never_trusted(tmp_path):
    """SIGKILL of the process group while `python -m venv` builds the environment: nothing is at the final path,
    and the next use removes the killed build and makes a whole one. A folder without the marker, or with other
    pins, is rebuilt, never used."""
    python_311_or_310()
    env = tmp_path / "env"
    code = (
        "import sys; from pathlib import Path; from edgecls.convert.imx500_env import ensure_env; "
        "ensure_env(path=Path(sys.argv[1]), pins=())"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(env)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(tmp_path.glob(".env.new-*/bin/python")):
            assert child.poll() is None, "the install ended before it could be killed"
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
    assert list(tmp_path.glob(".env.new-*")), "the kill came after the build folder was renamed"
    assert env_state(env, pins=()).status == "absent" and not env.exists()

    toolchain = ensure_env(path=env, pins=())
    assert env_state(env, pins=()).ready and toolchain.python == env / "bin" / "python"
    assert not list(tmp_path.glob(".env.new-*")), "the killed build was left"
    version = subprocess.run(
        [str(toolchain.python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(version) == env  # a renamed venv run through its python is that venv

    (env / imx500_env.MARKER).unlink()  # what an install killed by an older edgecls, or by hand, looks like
    (env / "stray").write_text("from the broken install")
    state = env_state(env, pins=())
    assert state.status == "incomplete" and "no marker" in state.detail
    said: list[str] = []
    ensure_env(said.append, path=env, pins=())
    assert env_state(env, pins=()).ready and not (env / "stray").exists()
    assert any("did not finish installing" in line for line in said)
    assert env_state(env, pins=("other==1",)).status == "outdated"


def test_pip_progress_is_a_few_short_lines():
    lines = [
        "Collecting numpy==1.26.4",
        "  Downloading tensorflow-2.15.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl (475.3 MB)",
        "  Downloading six-1.17.0-py2.py3-none-any.whl (11 kB)",
        "Installing collected packages: six, numpy, tensorflow",
        "Successfully installed numpy-1.26.4 six-1.17.0 tensorflow-2.15.1",
    ]
    assert [pip_event(line) for line in lines] == [
        None,
        "downloading tensorflow-2.15.1 (475.3 MB)",
        None,
        "installing 3 packages",
        "installed 3 packages",
    ]


def test_doctor_shows_the_state_without_importing_tensorflow(tmp_path, monkeypatch):
    from edgecls.device.doctor import diagnose

    monkeypatch.setenv(imx500_env.ENV_VAR, str(tmp_path / "env"))
    finding = next(f for f in diagnose(tmp_path, extra=[imx500_env.doctor_check]) if f.check == "imx500 toolchain")
    assert finding.status == "info" and "not created yet" in finding.detail and "Java 17" in finding.fix
    (tmp_path / "env").mkdir()
    finding = next(f for f in diagnose(tmp_path, extra=[imx500_env.doctor_check]) if f.check == "imx500 toolchain")
    assert "did not finish" in finding.detail
    fake_program(tmp_path / "env" / "bin", "python", "exit 0\n")
    (tmp_path / "env" / imx500_env.MARKER).write_text(json.dumps({"pins": list(imx500_env.PINS), "python": "3.11.7"}))
    finding = next(f for f in diagnose(tmp_path, extra=[imx500_env.doctor_check]) if f.check == "imx500 toolchain")
    assert finding.status == "ok" and "Python 3.11.7" in finding.detail and "imx500-converter" in finding.detail
    code = (
        "import sys, edgecls.device.doctor as d, edgecls.convert.imx500_env as e; d.diagnose(extra=[e.doctor_check]); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, imx500_env.ENV_VAR: str(tmp_path)},
    )
    assert out.stdout.split() == ["False", "False"]


# -- what the IMX500 takes ----------------------------------------------------------------------------------------


def test_a_layer_the_imx500_does_not_take_is_refused_before_any_work(tmp_path, monkeypatch):
    """A registry architecture with a layer outside what the export takes: refused, naming the layer, before Java
    is asked for or the toolchain's environment is made."""
    tensorflow_or_skip()
    import keras
    from edgecls.convert import imx500, models

    def layernorm_net(spec):
        inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
        x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
        x = keras.layers.LayerNormalization(name="norm")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(spec.num_classes, activation="softmax")(x))

    monkeypatch.setitem(
        models.ARCHITECTURES,
        "test-layernorm",
        models.Architecture(
            name="test-layernorm", build=layernorm_net, input_size=32, tune_sizes=(32,), family="compact"
        ),
    )
    monkeypatch.setenv("PATH", str(tmp_path / "no-java"))
    monkeypatch.setenv(imx500_env.ENV_VAR, str(tmp_path / "env"))
    spec = models.ModelSpec(num_classes=3, input_size=32)
    with pytest.raises(ConversionError, match=r"layer 'norm' \(LayerNormalization\) of test-layernorm"):
        imx500.preflight("test-layernorm", spec)
    assert not (tmp_path / "env").exists()
    # an activation it does not take is named too; a model that is not edgecls's own is refused
    inputs = keras.Input((32, 32, 3))
    gelu = keras.Model(inputs, keras.layers.Activation("gelu", name="act")(keras.layers.Conv2D(4, 3)(inputs)))
    with pytest.raises(ConversionError, match=r"layer 'act' \(Activation\(gelu\)\)"):
        imx500.check_model(gelu, arch="compact-cnn")
    plain = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ConversionError, match="rebuilds edgecls's own architectures"):
        imx500.check_model(plain, arch="my_model")
    # the AI Camera's sensor gives RGB: a grayscale model is refused by the options, before anything loads
    from edgecls.convert.options import ConvertOptions

    with pytest.raises(ConfigError, match="--target imx500 needs --color rgb"):
        ConvertOptions.create(tmp_path / "run", target="imx500", color="grayscale")


def test_an_external_or_missing_run_is_refused(tmp_path):
    from edgecls.convert.imx500_run import export_run

    with pytest.raises(ConfigError, match="not a finished edgecls run"):
        export_run(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"")
    (tmp_path / "report.json").write_text(
        json.dumps({"model": {"arch": "saved_model", "source_model": "/m"}, "classes": ["a", "b"]})
    )
    with pytest.raises(ConfigError, match="trained elsewhere"):
        export_run(tmp_path)


def test_memory_report_and_parity_section():
    from edgecls.convert.imx500 import markdown_lines, memory_use, parity, summary_line, verdict

    memory = memory_use(
        {
            "Memory Report": {
                "Runtime Memory Physical Size": "151552B",
                "Model Memory Physical Size": "113.00KB",
                "Reserved Memory": "1024B",
                "Memory Usage": "934464B",
                "Total Memory Available On Chip": "8.00MB",
                "Memory Utilization": "12%",
                "Fit In Chip": True,
                "Input Persistent": True,
                "Networks": [{"Input Persistence Cost": "16384B"}],
            }
        }
    )
    assert memory["used_bytes"] == 934464 and memory["available_bytes"] == 8 * 1024**2
    assert memory["model_bytes"] == 113 * 1024 and memory["input_persistence_bytes"] == 16384
    assert memory["share"] == round(934464 / 8 / 1024**2, 4) and memory["fits"]

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    float_probs = np.eye(3)[labels]
    worse = float_probs.copy()
    worse[0] = [0, 1, 0]  # one image of ten changes its answer: 10 points, 90% agreement
    section = {
        **parity(labels, float_probs, worse, ["a", "b", "c"], max_drop=1.0, min_agreement=0.9),
        "memory": memory,
        "rebuild_max_difference": 3e-8,
        "calibration_images": 30,
        "package_bytes": 53000,
        "files": {"package": "imx500/packerOut.zip"},
    }
    assert section["drop_points"] == pytest.approx(10.0) and section["agreement"] == pytest.approx(0.9)
    assert not section["passed"] and "10.00 points below float" in verdict(section)
    text = "\n".join(markdown_lines(section))
    assert "IMX500 parity gate FAILED" in text and "913 KiB of 8.00 MiB (11.1%" in text
    assert "imx500-package -i packerOut.zip" in text and "ISP crops and resizes" in text
    assert "FAILED" in summary_line(section) and "11%" in summary_line(section)
    same = parity(labels, float_probs, float_probs, ["a", "b", "c"], max_drop=1.0, min_agreement=0.9)
    assert verdict({**section, **same}) is None
    too_big = {**section, **same, "memory": {**memory, "fits": False}}
    assert "smaller --input-size" in verdict(too_big)
    assert markdown_lines(None) == []


def test_export_command_exit_codes(tmp_path, monkeypatch):
    """The command is a thin layer: a failed IMX500 gate is exit code 3 with one error line (the files are written),
    a project error exit code 1 with one error line and no traceback."""
    from edgecls.convert import imx500_run
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    failing = {
        "imx500_top1": 0.5,
        "float_top1": 0.9,
        "drop_points": 40.0,
        "agreement": 0.5,
        "passed": False,
        "gate_message": "IMX500 top-1 is 40.00 points below float, more than --max-drop 1.00",
        "memory": {"used_bytes": 1024, "available_bytes": 8 * 1024**2, "share": 0.0001, "fits": True},
        "files": {"package": "imx500/packerOut.zip"},
    }
    seen = {}

    def fake_export(run_dir, **kwargs):
        seen.update(kwargs, run_dir=run_dir)
        return failing

    monkeypatch.setattr(imx500_run, "export_run", fake_export)
    result = CliRunner().invoke(app, ["export", "imx500", str(tmp_path), "--max-drop", "2"])
    assert result.exit_code == 3, result.output
    assert result.output.count("error:") == 1 and "40.00 points below float" in result.output
    assert seen["max_drop"] == 2.0 and seen["min_agreement"] is None and seen["run_dir"] == tmp_path
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["export", "imx500", str(tmp_path)])
    assert result.exit_code == 1 and "not a finished edgecls run" in result.output
    assert "Traceback" not in result.output


def test_the_export_folder_is_swapped_in_whole_and_links_are_not_followed(tmp_path):
    """RUN/imx500 is replaced by renames only: a link there is replaced, never written through; what a killed
    export left is removed, a live process's is kept; a run folder that cannot be written is one WriteError."""
    from edgecls.convert.imx500 import _swap_in, new_stage

    from edgecls.errors import WriteError

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "packerOut.zip").write_bytes(b"not ours")
    (run / "imx500").symlink_to(elsewhere, target_is_directory=True)
    dead = run / f".imx500.new-{2**22 + 7}-x"  # no such process: what a killed export left
    live = run / f".imx500.new-{os.getppid()}-x"  # a live process's build
    dead.mkdir()
    live.mkdir()
    stage = new_stage(run)
    assert not dead.exists() and live.exists() and stage.parent == run
    (stage / "packerOut.zip").write_bytes(b"new")
    _swap_in(stage, run / "imx500")
    assert not (run / "imx500").is_symlink() and (run / "imx500" / "packerOut.zip").read_bytes() == b"new"
    assert (elsewhere / "packerOut.zip").read_bytes() == b"not ours"
    assert sorted(p.name for p in run.iterdir()) == [live.name, "imx500"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(WriteError, match="cannot write .*a-file/imx500"):
        new_stage(tmp_path / "a-file")


# -- the real toolchain -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toolchain():
    """The IMX500 toolchain's environment, created on first use (minutes, from PyPI), with Java 17."""
    try:
        imx500_env.check_java()
        return ensure_env()
    except ConversionError as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI=true: .ci/run installs Java 17 and creates the environment)")
        pytest.skip(f"the IMX500 toolchain is not available here: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, size, extra",
    [
        ("compact-cnn", 48, {"width": 8, "depth": 2}),
        ("compact-cnn", 48, {"width": 8, "depth": 2, "separable": False}),
        ("seed-cnn", 64, {}),
        ("mobilenet_v1", 64, {"alpha": 0.25}),
        ("mobilenet_v2", 64, {"alpha": 0.35}),
        ("mobilenet_v3_small", 64, {"alpha": 0.75}),
    ],
)
def test_the_tf_keras_rebuild_matches_the_keras_3_model_on_real_images(arch, size, extra, toolchain, flowers):
    """Every registry architecture, with random weights and batch-norm statistics, rebuilt in tf.keras 2.15 inside
    the toolchain's environment with Rescaling as tensor ops: outputs within 1e-5 of the Keras 3 model on flower
    photos."""
    tensorflow_or_skip()
    from edgecls.convert.imx500 import _layers, rebuild_outputs
    from edgecls.convert.models import ModelSpec, create_model
    from PIL import Image

    from edgecls.model.images import read_image

    spec = ModelSpec(num_classes=5, input_size=size, weights="none", **extra)
    model = create_model(arch, spec)
    rng = np.random.default_rng(0)
    for layer in _layers(model):
        if type(layer).__name__ == "BatchNormalization":  # statistics that are not the identity
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )
    paths = [min((flowers / name).glob("*.jpg")) for name in sorted(os.listdir(flowers)) if (flowers / name).is_dir()]
    images = np.stack([np.asarray(Image.fromarray(read_image(p)).resize((size, size))) for p in paths * 2])
    expected = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    rebuilt = rebuild_outputs(model, arch=arch, spec=spec, images=images)
    assert rebuilt.shape == expected.shape
    assert np.max(np.abs(rebuilt - expected)) < 1e-5
    assert np.ptp(expected) > 1e-3  # the images give different answers: the comparison can fail


def colours(root: Path, per_class: int = 60) -> Path:
    """Noisy 32 px images whose class is the colour that dominates them: a few epochs learn it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for channel, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 120, (32, 32, 3))
            image[..., channel] += rng.integers(60, 136)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_convert_target_imx500_then_export_again(toolchain, tmp_path):
    """A real MCT + imxconv-tf conversion of a small compact-cnn: `edgecls convert DATA --target imx500` writes
    RUN/imx500/ and the report's section; `edgecls export imx500 RUN` does it again in place, swapped in whole."""
    data = colours(tmp_path / "data")
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "edgecls",
        "convert",
        str(data),
        "--out",
        str(run),
        "--target",
        "imx500",
        "--input-size",
        "32",
        "--width",
        "8",
        "--depth",
        "2",
        "--epochs",
        "12",
        "--no-baseline",
        "--seed",
        "0",
        "--calibration-samples",
        "64",
        "--max-drop",
        "100",
        "--min-agreement",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMX500: top-1" in done.stderr and "packerOut.zip" in done.stderr

    report = json.loads((run / "report.json").read_text())
    section = report["imx500"]
    assert section["test_images"] == report["test_images"] and section["float_top1"] == report["float"]["top1"]
    assert 0.0 <= section["agreement"] <= 1.0 and section["drop_points"] == pytest.approx(
        100 * (section["float_top1"] - section["imx500_top1"]), abs=1e-3
    )
    assert report["float"]["top1"] > 0.5, "the model learned nothing: the parity figures would prove nothing"
    memory = section["memory"]
    assert memory["fits"] and 0 < memory["share"] < 0.1 and memory["available_bytes"] > 8_000_000
    assert section["rebuild_max_difference"] < 1e-5
    assert section["output"] == {"head": "softmax", "scale": pytest.approx(1 / 256)}
    folder = run / "imx500"
    assert (folder / "labels.txt").read_text() == (run / "labels.txt").read_text()
    with zipfile.ZipFile(folder / "packerOut.zip") as package:
        assert {"dnnParams.xml", "manifest.json"} <= set(package.namelist())
    assert json.loads((folder / "memory_report.json").read_text())["Memory Report"]["Fit In Chip"] is True
    assert json.loads((folder / "imx500.json").read_text()) == section
    markdown = (run / "report.md").read_text()
    assert "## Raspberry Pi AI Camera (IMX500)" in markdown and "IMX500 parity gate PASSED" in markdown
    assert oct(folder.stat().st_mode & 0o777) == oct(run.stat().st_mode & 0o777)

    first = (folder / "packerOut.zip").stat().st_ino
    stale = run / f".imx500.new-{2**22 + 7}-left"  # what a killed export left (no such process)
    stale.mkdir()
    again = subprocess.run(
        [sys.executable, "-m", "edgecls", "export", "imx500", str(run), "--max-drop", "100", "--min-agreement", "0"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (folder / "packerOut.zip").stat().st_ino != first  # a new folder, renamed in
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    redone = json.loads((run / "report.json").read_text())["imx500"]
    assert redone["agreement"] == section["agreement"] and redone["memory"]["used_bytes"] == memory["used_bytes"]
    assert "IMX500 parity gate PASSED" in (run / "report.md").read_text()
