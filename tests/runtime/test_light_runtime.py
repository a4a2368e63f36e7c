"""The device runtime stays light: no TensorFlow, Keras, torch or OpenCV unless they are really needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "torch", "cv2", "tf_keras")


def imported_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(m for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(out.split())


def test_import_edgecls_imports_nothing_heavy_not_even_numpy():
    modules = imported_after("import edgecls")
    assert not modules & {*HEAVY, "numpy", "PIL", "typer"}, modules & {*HEAVY, "numpy", "PIL", "typer"}


def test_classifying_never_imports_tensorflow(coral):
    modules = imported_after(
        "import edgecls\n"
        f"clf = edgecls.Classifier({str(coral / 'mobilenet_v2_1.0_224_quant.tflite')!r})\n"
        f"clf.classify({str(coral / 'cat.bmp')!r})"
    )
    assert not modules & {"tensorflow", "keras", "torch", "tf_keras"}


def test_the_runtime_package_has_no_tensorflow_import_statement():
    offenders = []
    for path in (ROOT / "edgecls").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import tensorflow", "from tensorflow", "import keras", "from keras")):
                offenders.append(f"{path.name}:{number}")
    assert offenders == []  # backends.py reaches tensorflow only through importlib, as the last fallback


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_cli_help_is_quick_to_import():
    modules = imported_after("import edgecls.cli.app")
    assert "numpy" not in modules and "cv2" not in modules


# --- the command line pays only for what a command uses (issue 34; the time is measured in benchmarks/runtime_speed.py)

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
# Nothing that runs one image through a model needs these: the workstation's commands (and the TensorFlow they may
# bring), the live, sink and device wings, rich (Typer's help and error boxes) and pydantic (typer 0.29 imports it).
NOT_FOR_A_DEVICE_COMMAND = (
    "edgecls.convert",
    "edgecls.live",
    "edgecls.sinks",
    "edgecls.device",
    "rich",
    "pydantic",
    "tensorflow",
    "keras",
    "tf_keras",
    "torch",
)


def modules_of_the_command(*args: object) -> tuple[str, set[str]]:
    """Run the console script's entry point with ``args`` in a child process: its stdout and the modules it ended
    with (written on exit, after the command has done all it does)."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
        f"sys.argv = ['edgecls', *{[str(a) for a in args]!r}]\n"
        "from edgecls.__main__ import console\n"
        "console()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    listed = [line for line in proc.stderr.splitlines() if line.startswith("MODULES ")]
    assert len(listed) == 1, proc.stderr
    return proc.stdout, set(listed[0].split()[1:])


def loaded(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {m for m in modules if m in packages or m.startswith(tuple(p + "." for p in packages))}


def test_classify_on_the_command_line_loads_no_other_wing_nor_rich_nor_the_package_metadata(coral):
    out, modules = modules_of_the_command("classify", coral / MODEL, coral / "cat.bmp")
    assert "Egyptian cat" in out
    assert not loaded(modules, NOT_FOR_A_DEVICE_COMMAND), loaded(modules, NOT_FOR_A_DEVICE_COMMAND)
    # importlib.metadata (and the email package it brings) only for a command that prints the runtime's version
    assert not loaded(modules, ("importlib.metadata", "email")), loaded(modules, ("importlib.metadata", "email"))


def test_info_loads_no_other_wing(coral):
    out, modules = modules_of_the_command("info", coral / MODEL)
    assert "ai_edge_litert" in out or "tflite_runtime" in out or "tensorflow" in out  # the backend, by name
    assert not loaded(modules, NOT_FOR_A_DEVICE_COMMAND), loaded(modules, NOT_FOR_A_DEVICE_COMMAND)


def test_help_loads_no_model_code():
    out, modules = modules_of_the_command("--help")
    assert "classify" in out and "convert" in out  # the workstation's commands are listed too
    heavy = ("numpy", "cv2", "PIL", "ai_edge_litert", "tflite_runtime", "edgecls.model", "tensorflow")
    assert not loaded(modules, heavy), loaded(modules, heavy)


def test_a_command_alone_answers_as_the_whole_app_does(coral, tmp_path):
    """The console script builds only the command it runs (edgecls.cli.app._app_for); whatever the arguments, the
    answer is the whole app's: output, errors, exit code, the options before the command."""
    import re

    from typer.testing import CliRunner

    from edgecls.cli.app import _app_for, app

    model, cat = coral / MODEL, coral / "cat.bmp"
    cases = [
        ["classify", model, cat, "--top-k", "2"],
        ["-v", "classify", model, cat, "--json"],
        ["-vv", "--verbose", "classify", model, tmp_path / "missing.jpg", cat],
        ["classify", "--help"],
        ["classify", model],
        ["classify", model, cat, "--top-k", "0"],
        ["info", model, "--json"],
        ["info", "--bogus"],
        ["profiles", "--help"],
        ["mqtt-clear", "--help"],
    ]
    timing = re.compile(r'\[\d+\.\d ms\]|"latency_ms": [\d.]+')
    for case in cases:
        args = [str(a) for a in case]
        light = _app_for(args)
        assert light is not app and len(light.registered_commands) == 1, args
        one, whole = CliRunner().invoke(light, args), CliRunner().invoke(app, args)
        assert one.exit_code == whole.exit_code, (args, one.output, whole.output)
        assert timing.sub("", one.stdout) == timing.sub("", whole.stdout), args
        assert one.stderr == whole.stderr, args
    for args in (["convert", "--help"], ["cache"], ["--help"], [], ["--version"], ["clasify"], ["-v"]):
        assert _app_for(args) is app, args  # the workstation's commands, help, the version, a typo: the whole app
    for args in (["--help", "classify"], ["-v", "--help", "run"]):  # the app's help, before the command: all of it
        assert _app_for(args) is app, args
        assert "convert" in CliRunner().invoke(_app_for(args), args).stdout, args


def test_the_options_before_a_command_take_no_value():
    """_app_for takes the first argument that is not an option for the command's name: an option before the
    command that took a value (``edgecls --config FILE classify``) would break that."""
    import typer.main

    from edgecls.cli.app import app

    group = typer.main.get_command(app)
    takes_a_value = [p.name for p in group.params if not (getattr(p, "is_flag", False) or getattr(p, "count", False))]
    assert takes_a_value == []
