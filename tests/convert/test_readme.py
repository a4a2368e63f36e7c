"""The README's first ten minutes, exactly as written: its set-up and demo commands, then its Python examples, run as
a newcomer runs them (real processes, in a fresh folder), and each does what the README says it does."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tensorflow_or_skip


def readme_blocks(language: str, section: str) -> list[str]:
    """The ``language`` code blocks of the README section whose heading starts with ``section``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}.*?(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no section {section!r}"
    return re.findall(rf"```{language}\n(.*?)```", match.group(0), re.DOTALL)


def edgecls_lines(block: str) -> list[list[str]]:
    """The block's `edgecls ...` command lines (setting up the environment is the test's own job)."""
    commands = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "edgecls":
            commands.append(argv)
    return commands


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    tensorflow_or_skip()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
    }

    def run(argv: list[str]) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, check=False)

    commands = [c for block in readme_blocks("bash", "Set up and run") for c in edgecls_lines(block)]
    assert commands[0] == ["edgecls", "convert", "--demo", "--out", "demo-run"], commands
    assert any(c[1] == "classify" for c in commands) and any(c[1] == "info" for c in commands)
    for argv in commands:
        done = run(argv)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr[-4000:]}"
        if argv[1] == "convert":
            assert "parity gate passed" in done.stderr, done.stderr[-2000:]
            report = json.loads((tmp_path / "demo-run" / "report.json").read_text())
            # chance is 20%; runs land between about 0.89 and 0.99
            assert report["passed"] and report["int8"]["top1"] >= 0.8 and report["baseline"]["arch"] == "seed-cnn"
            # the summary's size is the file's, as `edgecls info` shows it
            size = (tmp_path / "demo-run" / "model.tflite").stat().st_size
            assert f"{size / 1024:.1f} KiB model" in done.stderr
        if argv[1] == "classify":
            assert re.search(r"star_0000\.png: star \(", done.stdout), done.stdout  # the README's star is a star
        if argv[1] == "info":
            size = (tmp_path / "demo-run" / "model.tflite").stat().st_size
            assert f"{size / 1024:.1f} KiB" in done.stdout, done.stdout

    stars = sorted((tmp_path / "demo-run" / "demo_data" / "star").iterdir())[:5]
    done = run(["edgecls", "classify", "demo-run/model.tflite", *map(str, stars), "--top-k", "1", "--json"])
    labels = [json.loads(line)["predictions"][0]["label"] for line in done.stdout.splitlines()]
    assert labels.count("star") >= 3, labels

    runtime, converter = readme_blocks("python", "Python API")
    done = run([sys.executable, "-c", runtime])
    assert done.returncode == 0 and "Prediction(index=" in done.stdout and "label='star'" in done.stdout, done
    done = run([sys.executable, "-c", converter])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "parity gate passed" in done.stdout, done.stdout + done.stderr[-2000:]  # what the README's comment says
    assert (tmp_path / "run" / "model.tflite").is_file()
