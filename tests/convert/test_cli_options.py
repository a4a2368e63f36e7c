"""The command line's options map onto the configuration objects in one place (edgecls.convert.cli._option_values):
each flag sits in the help panel of the object it sets, and a command line arrives at the library as those options.
No TensorFlow: the library's entry points are replaced by ones that record what they were given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main
from edgecls.convert import cli
from edgecls.convert.options import GROUPS, ConvertOptions, TuneOptions
from typer.testing import CliRunner

from edgecls.cli.app import app

runner = CliRunner()


def _params(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["convert", "tune"])
def test_each_flag_sits_in_the_panel_of_the_object_it_sets(command):
    group_of = {f.name: cls for cls in GROUPS.values() for f in dataclasses.fields(cls)}
    tune_fields = {f.name for f in dataclasses.fields(TuneOptions)} | {"timeout"}  # --timeout sets timeout_min
    external = {"labels", "mean", "std"}  # DataOptions' fields that only a model trained elsewhere reads
    for name, param in _params(command).items():
        panel = getattr(param, "rich_help_panel", None)
        if command == "tune" and name in tune_fields:
            assert panel == cli.PANELS[TuneOptions], name
        elif name in external:
            assert panel == cli.EXTERNAL, name
        elif name in group_of:
            assert panel == cli.PANELS[group_of[name]], name


class Recorded(Exception):
    pass


@pytest.fixture()
def recorded(monkeypatch):
    """What the command handed the library: the entry point's name and its keyword arguments."""
    from edgecls.convert import api

    calls: list = []

    def record(name):
        def entry(*args, **kwargs):
            calls.append((name, args, kwargs))
            raise Recorded

        return entry

    for name in ("train", "quantize", "demo"):
        monkeypatch.setattr(api, name, record(name))
    monkeypatch.setattr(api, "import_tensorflow", lambda *a, **k: None)
    import edgecls.convert.tune as tune_module

    monkeypatch.setattr(tune_module, "tune", record("tune"))
    return calls


def test_training_gets_the_flags_given_as_option_values(recorded, tmp_path):
    args = ["convert", str(tmp_path), "--out", str(tmp_path / "run"), "--split", "80,10,10", "--class-weights", "auto"]
    args += ["--extra-data", "more", "--optimizer", "sgd", "--qat", "--teacher", "t.keras", "--epochs", "3"]
    runner.invoke(app, args)
    ((name, _, kwargs),) = recorded
    options = {k: v for k, v in kwargs.items() if k not in ("overwrite", "progress", "verbose", "stop_request")}
    assert name == "train" and str(options.pop("teacher")) == "t.keras"
    assert options == {
        "split": (0.8, 0.1, 0.1),
        "class_weights": True,
        "extra_data": ("more",),
        "optimizer": "sgd",
        "int8_method": "qat",  # the old switch, as the method it meant
        "epochs": 3,
    }
    built = ConvertOptions.create("run", teacher="t.keras", **options)
    assert built.train.class_weights and built.distill.teacher == Path("t.keras") and built.qat


def test_a_model_from_elsewhere_gets_every_option_at_its_default(recorded, tmp_path):
    runner.invoke(app, ["convert", str(tmp_path / "m.keras"), "--calibration", str(tmp_path), "--out", "run"])
    ((name, _, kwargs),) = recorded
    options = {k: v for k, v in kwargs.items() if k not in ("overwrite", "progress", "verbose")}
    assert name == "quantize"
    assert ConvertOptions.create("run", **options) == ConvertOptions.create("run")


def test_tune_keeps_the_conversion_settings_and_its_search_apart(recorded, tmp_path):
    runner.invoke(
        app,
        ["tune", str(tmp_path), "--out", str(tmp_path / "t"), "--color", "grayscale", "--seed", "4"]
        + ["--input-sizes", "64,96", "--timeout", "5", "--split", "60,20,20"],
    )
    ((name, args, _),) = recorded
    options = args[1]
    assert name == "tune" and isinstance(options, TuneOptions)
    assert options.base.color == "grayscale" and options.base.train.seed == 4 and options.seed == 4
    assert options.base.split == (0.6, 0.2, 0.2) and options.base.io == "int8"  # tune's own io default
    assert options.input_sizes == (64, 96) and options.timeout_min == 5 and options.trials == TuneOptions.trials
