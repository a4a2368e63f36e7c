"""Project-level promises: CI runs exactly the README's test command; the layout the issues ask for exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in [line.strip() for line in ci.splitlines()], f"{command!r} is not a line of .ci/run"


def test_layout():
    for name in ("edgecls", "convert", "firmware_configs", "tests", "examples", "benchmarks", ".ci", "pyproject.toml"):
        assert (ROOT / name).exists(), name
