"""edgecls.convert as a library: train() and quantize() from a notebook cell with string paths, a frozen result,
progress that goes to whatever console it is given, and the demo honouring every flag given with --demo."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from conftest import convert, one_error_line

pytestmark = pytest.mark.slow

# TINY (conftest) as keyword arguments: what a notebook user would type
TINY_KW = {
    "input_size": 32,
    "width": 8,
    "depth": 2,
    "epochs": 3,
    "baseline": False,
    "calibration_samples": 20,
    "max_drop": 100,
    "min_agreement": 0,
    "patience": 3,
    "batch_size": 8,
}


@pytest.fixture(scope="module")
def api_run(shapes, tmp_path_factory):
    from edgecls.convert import train
    from edgecls.convert.progress import RichObserver
    from rich.console import Console

    out = tmp_path_factory.mktemp("api") / "run"
    buffer = io.StringIO()
    observer = RichObserver(console=Console(file=buffer, width=200))
    result = train(str(shapes), str(out), progress=observer, **TINY_KW)  # str paths, as in a notebook
    return result, out, buffer.getvalue()


def test_train_returns_a_frozen_result_that_matches_the_report(api_run):
    from edgecls.convert import ConvertResult

    result, out, _ = api_run
    assert isinstance(result, ConvertResult)
    report = json.loads((out / "report.json").read_text())
    assert result.schema_version == report["schema_version"] == 1
    assert result.passed == report["passed"] and result.classes == ("circle", "square", "stripes")
    assert result.int8_top1 == report["int8"]["top1"] and result.agreement == report["agreement"]
    assert result.model_path == out.absolute() / "model.tflite" and result.model_path.is_file()
    for path in (
        result.keras_path,
        result.labels_path,
        result.report_path,
        result.report_md_path,
        result.confusion_matrix_path,
        result.training_curves_path,
    ):
        assert path.is_file(), path
    assert result.edgetpu_model_path is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.report["passed"] = False  # type: ignore[index]
    assert "parity gate" in str(result) and str(result.model_path) in str(result)
    assert result._repr_markdown_().startswith(report_first_line(out))


def report_first_line(out):
    return (out / "report.md").read_text().splitlines()[0]


def test_progress_goes_to_the_console_it_is_given(api_run):
    _, _, shown = api_run
    assert "training (train), up to 3 epochs" in shown
    assert "train   3/3" in shown or "train   2/3" in shown  # early stopping may end one epoch early
    assert "verifying the exported model on" in shown


def test_the_recipe_fills_only_what_the_user_left_out(api_run):
    """A 32 px compact-cnn starts from compact-small (edgecls.convert.recipes); the options given win."""
    from edgecls.convert.recipes import COMPACT_SMALL

    _, out, shown = api_run
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["recipe"] == "compact-small" and "the compact-small recipe (docs/convert.md) sets" in shown
    assert settings["train.augment"] == COMPACT_SMALL["augment"] and settings["dropout"] == COMPACT_SMALL["dropout"]
    assert settings["width"] == TINY_KW["width"] and settings["train.epochs"] == TINY_KW["epochs"]


def test_the_trained_model_classifies_with_no_other_argument(api_run, shapes):
    import edgecls

    result, _, _ = api_run
    with edgecls.Classifier(result.model_path) as clf:
        predictions = clf.classify(next((shapes / "circle").iterdir()), top_k=3)
    assert {p.label for p in predictions} == {"circle", "square", "stripes"}


def test_quantize_a_keras_model_from_elsewhere_with_string_paths(api_run, shapes, tmp_path):
    from edgecls.convert import quantize

    result, _, _ = api_run
    external = quantize(
        str(result.keras_path),
        str(shapes),
        str(tmp_path / "ext"),
        progress=False,
        max_drop=100,
        min_agreement=0,
        calibration_samples=10,
    )
    assert external.report["test_source"] == "calibration" and external.model_path.is_file()
    assert external.report["model"]["source_model"] == str(result.keras_path)


def test_options_are_checked_before_any_work(shapes, tmp_path):
    from edgecls.convert import train

    from edgecls.errors import ConfigError, EdgeclsError

    with pytest.raises(ConfigError, match="unknown option 'learnig_rate' \\(did you mean 'learning_rate'\\?\\)"):
        train(shapes, tmp_path / "a", learnig_rate=0.1)
    with pytest.raises(EdgeclsError, match="--int8-method 'gptq' is not one of ptq, bias-correction, int8-tune, qat"):
        train(shapes, tmp_path / "b", int8_method="gptq")
    with pytest.raises(EdgeclsError, match="learning rate must be in"):
        train(shapes, tmp_path / "c", learning_rate=5)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_second_run_into_the_same_folder_needs_overwrite(api_run, shapes):
    from edgecls.convert import train

    from edgecls.errors import ConfigError

    _, out, _ = api_run
    with pytest.raises(ConfigError, match="already holds a finished run; pass --overwrite"):
        train(shapes, out, progress=False, **TINY_KW)


def test_option_names_cover_the_command_line():
    import typer.main
    from edgecls.convert import OPTION_NAMES

    from edgecls.cli.app import app

    command = typer.main.get_command(app).commands["convert"]  # type: ignore[attr-defined]
    flags = {p.name for p in command.params if type(p).__name__ == "TyperOption" and not p.hidden}
    not_options = {"out", "demo", "overwrite", "calibration", "help"}  # arguments of train()/quantize()/demo()
    assert flags - not_options <= set(OPTION_NAMES), flags - not_options - set(OPTION_NAMES)


def test_demo_takes_every_flag_given_and_the_seed(tmp_path):
    """--demo used to drop most flags and train with seed 0 whatever --seed said."""
    out = tmp_path / "demo"
    result = convert(
        "--demo",
        "--out",
        out,
        "--epochs",
        "1",
        "--no-baseline",
        "--seed",
        "3",
        "--max-drop",
        "100",
        "--min-agreement",
        "0",
        "--int8-method",
        "ptq",
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["train.epochs"] == 1 and settings["train.seed"] == 3 and settings["baseline"] is False
    assert settings["int8_method"] == "ptq" and settings["width"] == 24  # the demo's own settings stay under the flags
    assert json.loads((out / "report.json").read_text())["baseline"] is None


def test_old_int8_switches_still_work_and_conflicts_are_one_line(shapes, tmp_path):
    result = convert(shapes, "--out", tmp_path / "x", "--int8-method", "int8-tune", "--qat")
    assert "--int8-method int8-tune and the older switch for qat disagree" in one_error_line(result)
