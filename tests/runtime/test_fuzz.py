"""Hostile models: a few hundred seeded mutations of a shared Coral model through `info`, `classify` and `check`
(see tests/fuzz_models.py), each ending in a clean exit code with no traceback, no crash and no hang."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # runs hundreds of hostile files through worker processes


def test_mutated_models_never_crash_hang_or_print_a_traceback(coral, tmp_path):
    from fuzz_models import run_cases

    report = run_cases(300, seed=1, workdir=tmp_path)
    assert report["runs"] == 900
    assert not report["failures"], json.dumps(report["failures"][:5], indent=1)
    assert report["exit_1"] > 100 and report["exit_0"] > 100  # many refused with one line, many still run
