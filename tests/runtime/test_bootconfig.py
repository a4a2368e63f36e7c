"""The boot-configuration tool a deploy bundle runs on the device (edgecls/device/bootconfig.py, shipped as
edgecls_bootconfig.py): idempotent, under [all], between markers, with a backup, and a reboot only when a line was
really added. It runs here as install.sh runs it: a file of its own, with no site packages (-I -S)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgecls.device.bootconfig import effective_lines, plan_edit, plan_removal

TOOL = Path(__file__).resolve().parents[2] / "edgecls" / "device" / "bootconfig.py"

# The shape of Raspberry Pi OS's default config.txt: camera_auto_detect already on, model filters before [all].
PI_OS = """# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
dtoverlay=vc4-kms-v3d
arm_64bit=1

[cm4]
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(TOOL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_line_already_in_effect_is_not_added_and_needs_no_reboot(tmp_path):
    config = tmp_path / "config.txt"
    config.write_text(PI_OS)
    done = tool("apply", str(config), "--profile", "rpi5", "--line", "camera_auto_detect=1", "detect cameras")
    assert done.returncode == 0, done.stderr
    assert "camera_auto_detect=1 is already in" in done.stdout and "needs no change" in done.stdout
    assert config.read_text() == PI_OS and not (tmp_path / "config.txt.edgecls-backup").exists()


def test_a_new_line_goes_under_all_between_markers_once(tmp_path):
    config = tmp_path / "config.txt"
    config.write_text(PI_OS)
    args = [
        "apply",
        str(config),
        "--profile",
        "rpi4",
        "--line",
        "dtoverlay=imx219",
        "the v2 camera",
        "--line",
        "camera_auto_detect=1",
        "detect cameras",
    ]
    dry = tool(*args, "--dry-run")
    assert dry.returncode == 10 and "would add dtoverlay=imx219" in dry.stdout and config.read_text() == PI_OS
    first = tool(*args)
    assert first.returncode == 10, first.stderr  # a line was added: reboot
    text = config.read_text()
    assert (tmp_path / "config.txt.edgecls-backup").read_text() == PI_OS
    block = text[text.index("# >>> edgecls rpi4") :]
    assert block.splitlines()[1] == "[all]" and "dtoverlay=imx219" in block and block.rstrip().endswith("# <<< edgecls")
    assert text.count("camera_auto_detect=1") == 1  # not a second time
    assert "dtoverlay=imx219" in effective_lines(text.splitlines())  # not under [cm5]
    again = tool(*args)
    assert again.returncode == 0 and config.read_text() == text  # idempotent
    removed = tool("remove", str(config))
    assert removed.returncode == 11 and config.read_text().rstrip() == PI_OS.rstrip()
    assert tool("remove", str(config)).returncode == 0


def test_a_line_only_under_a_model_filter_is_not_in_effect():
    text = PI_OS + "\n[pi4]\ndtoverlay=imx219\n"
    edit = plan_edit(text, [("dtoverlay=imx219", "camera")], profile="rpi4")
    assert edit.added == ("dtoverlay=imx219",) and edit.needs_reboot
    assert plan_removal(edit.text).text.rstrip() == text.rstrip()


@pytest.mark.parametrize("line", ["[all]", "# comment", "", "a=1\ndtoverlay=evil"])
def test_lines_that_are_not_settings_are_refused(tmp_path, line):
    config = tmp_path / "config.txt"
    config.write_text(PI_OS)
    done = tool("apply", str(config), "--line", line, "why")
    assert done.returncode == 1 and "not a boot configuration line" in done.stderr and config.read_text() == PI_OS


def test_a_missing_file_is_one_error_line(tmp_path):
    done = tool("apply", str(tmp_path / "nope.txt"), "--line", "a=1", "why")
    assert (
        done.returncode == 1 and done.stderr.startswith("boot config: cannot read") and "Traceback" not in done.stderr
    )
