"""Project-level promises: CI runs exactly the README's test command; the layout the issues ask for exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.DOTALL)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in [line.strip() for line in ci.splitlines()], f"{command!r} is not a line of .ci/run"


def test_layout():
    for name in ("edgecls", "convert", "firmware_configs", "tests", "examples", "benchmarks", ".ci", "pyproject.toml"):
        assert (ROOT / name).exists(), name


# -- one package, no import circles -------------------------------------------------------------------------------

PACKAGES = {
    "edgecls": ROOT / "edgecls",
    "edgecls.convert": ROOT / "convert",
    "edgecls.firmware_configs": ROOT / "firmware_configs",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts or (path.parent != folder and not (path.parent / "__init__.py").exists()):
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Which of our modules each of our modules imports, anywhere in it (inside functions too; TYPE_CHECKING blocks
    are not imports at run time)."""
    import ast

    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def test_no_two_modules_import_each_other_directly_or_in_a_loop():
    graph = import_graph()
    assert "edgecls.convert.cli" in graph["edgecls.cli.app"]  # the graph sees lazy imports
    # a module's own package __init__ runs first in any case; an edge to it is not a loop of ours
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    loops = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    loops.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not loops, loops


# -- the house in wings: each floor imports only the floors below it ------------------------------------------------

FLOORS = ["model", "live", "sinks", "device", "convert", "cli"]  # bottom to top; edgecls/*.py below them all


def floor(module: str) -> int:
    """-1 for the root modules (errors, fsutil, nativelog), then the wing's place in FLOORS; the converter's own
    command-line modules sit with the CLI, edgecls/__main__ and edgecls/__init__ above everything (the entry point
    and the lazy public names)."""
    parts = module.split(".")
    if module in ("edgecls", "edgecls.__main__"):
        return len(FLOORS)
    if parts[1:2] == ["convert"]:
        return FLOORS.index("cli") if parts[-1] in ("cli", "cli_export") else FLOORS.index("convert")
    return FLOORS.index(parts[1]) if len(parts) > 2 and parts[1] in FLOORS else -1


def test_every_wing_imports_only_the_floors_below_it():
    graph = import_graph()
    wings = {p.name for p in (ROOT / "edgecls").iterdir() if (p / "__init__.py").is_file()}
    assert wings == set(FLOORS) - {"convert"}, "a new subpackage of edgecls/ needs its floor in FLOORS"
    assert any(name.startswith("edgecls.sinks.") for name in graph)  # the walk reaches into the wings
    upward = [
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if floor(b) > floor(a) and not a.startswith(b + ".")
    ]
    assert not upward, upward


def test_every_subpackage_is_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "edgecls." + ".".join(p.parent.relative_to(ROOT / "edgecls").parts)
        for p in (ROOT / "edgecls").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert {f.rstrip(".") for f in found} <= listed


def test_the_wheel_holds_one_top_level_package(tmp_path):
    """`pip wheel .` (what `edgecls deploy` bundles): edgecls alone, with the converter and the profiles inside."""
    import zipfile

    from edgecls.device.wheels import build_wheel

    wheel = build_wheel(ROOT, cache=tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"edgecls", wheel.name.split("-py3")[0] + ".dist-info"}
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["edgecls"]
    assert {
        "edgecls/convert/api.py",
        "edgecls/convert/pipeline.py",
        "edgecls/firmware_configs/rpi5.toml",
        "edgecls/firmware_configs/README.md",
        "edgecls/model/manifest.py",
        "edgecls/device/scripts/install.sh",  # the device scripts deploy renders: package data
        "edgecls/device/scripts/edgecls.service",
    } <= set(names)


def test_a_users_own_convert_module_does_not_shadow_the_converter(tmp_path):
    import subprocess
    import sys

    (tmp_path / "convert.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "firmware_configs").mkdir()
    (tmp_path / "firmware_configs" / "__init__.py").write_text("raise SystemExit('shadowed profiles')\n")
    for args in (["convert", "--help"], ["profiles"]):
        done = subprocess.run(
            [sys.executable, "-m", "edgecls", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "rpi5" in done.stdout


# -- the README's commands ----------------------------------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """Every `edgecls ...` command line in the README's console and bash blocks, as argv (comments dropped)."""
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:console|bash)\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"^(\$|pi\$)\s*", "", line.strip())
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and argv[0] == "edgecls":
                    commands.append(argv[1:])
    return commands


def test_every_edgecls_command_in_the_readme_parses():
    """Each README command names a real command with real options and choices (parsed by the real command line,
    not run: the main job itself runs end to end in tests/convert/test_convert_pipeline.py)."""
    import typer
    import typer.main

    from edgecls.cli.app import app

    group = typer.main.get_command(app)
    commands = readme_commands()
    assert len(commands) >= 15 and ["convert", "--demo", "--out", "demo-run"] in commands
    for name, *rest in commands:
        assert name in group.commands, name  # type: ignore[attr-defined]
        group.commands[name].make_context(name, list(rest), parent=typer.Context(group))  # type: ignore[attr-defined]


def test_help_shows_every_option_text_and_an_example_for_each_command():
    """rich markup must not swallow a "[...]" in a help text; each command's help ends with examples."""
    import typer.main
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        shown = " ".join(
            CliRunner()
            .invoke(app, [name, "--help"], terminal_width=2000, env={"COLUMNS": "2000"})
            .output.replace("│", " ")
            .split()
        )
        assert "Examples:" in shown and f"edgecls {name}" in shown.split("Examples:")[1], name
        for param in command.params:
            help_text = getattr(param, "help", None)
            if help_text and not getattr(param, "hidden", False):
                expected = " ".join(help_text.replace("\\[", "[").split())
                assert expected in shown, (name, param.name, expected)


def test_completion_and_verbosity_are_on_the_command_line():
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    top = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--install-completion" in top and "--verbose" in top
    bad = CliRunner().invoke(app, ["doctor"], env={"EDGECLS_LOG": "loud"})
    assert bad.exit_code == 2 and "EDGECLS_LOG='loud' is not one of debug, info, warning, error" in bad.output


# -- the house style: ruff's lint and format check, with the pinned ruff of the dev extra ----------------------


def _ruff() -> list[str]:
    import os
    import shutil
    import sys

    import pytest

    beside = Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.is_file() else shutil.which("ruff")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ruff is not installed: pip install -e '.[dev]'")
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [found]


def test_ruff_lint_passes():
    import subprocess

    done = subprocess.run([*_ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_check_passes():
    import subprocess

    done = subprocess.run(
        [*_ruff(), "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout + done.stderr
