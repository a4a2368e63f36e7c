"""Defaults that follow the data: compact-cnn's downsampling and the augmentation's mirroring follow the input, the
report says when the textbook baseline did better or when the data wants transfer learning. No training here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from edgecls.convert.gate import advice
from edgecls.convert.models import stride_plan
from edgecls.convert.options import ConvertOptions
from edgecls.convert.progress import duration
from edgecls.convert.training import flips


@pytest.mark.parametrize(
    "size, depth, expected_final",
    [(28, 4, 4), (32, 4, 4), (48, 4, 3), (64, 4, 4), (96, 4, 3), (128, 4, 4), (224, 4, 7), (32, 2, 4), (16, 4, 4)],
)
def test_compact_cnn_halves_the_resolution_only_while_the_input_allows(size, depth, expected_final):
    strides = stride_plan(size, depth)
    assert len(strides) == depth + 1 and set(strides) <= {1, 2}
    final = size
    for stride in strides:
        final = -(-final // stride)  # "same" padding
    assert final == expected_final
    if 1 in strides and size >= 16:
        assert strides[0] == 1  # the stem keeps the full resolution first


def test_a_28_pixel_digit_is_not_downsampled_like_a_photo():
    assert stride_plan(28, 4).count(2) == 3 and stride_plan(128, 4).count(2) == 5


@pytest.mark.parametrize(
    "flip, shape, expected",
    [
        ("auto", (10, 28, 28, 1), False),
        ("auto", (10, 32, 32, 1), False),
        ("auto", (10, 64, 64, 1), True),
        ("auto", (10, 28, 28, 3), True),
        ("on", (10, 28, 28, 1), True),
        ("off", (10, 96, 96, 3), False),
    ],
)
def test_mirroring_suits_the_images(flip, shape, expected):
    assert flips(flip, shape) is expected


def _dataset(per_class: int) -> SimpleNamespace:
    return SimpleNamespace(root=Path("/data/my photos"), counts=lambda split: {"cat": per_class, "dog": per_class + 5})


def _metrics(int8_top1: float) -> dict:
    return {"int8": {"top1": int8_top1}, "float": {"top1": int8_top1}}


def test_the_report_says_when_the_seed_cnn_baseline_did_better(tmp_path):
    options = ConvertOptions.create(tmp_path / "run")
    lines = advice(options, _dataset(500), _metrics(0.70), {"float_top1": 0.80}, per_image=0.5)
    assert len(lines) == 1
    assert "baseline (the tutorial CNN, --arch seed-cnn" in lines[0] and "80.0%" in lines[0] and "70.0%" in lines[0]
    assert f"edgecls convert '/data/my photos' --out {tmp_path / 'run'}-transfer --arch mobilenet_v1" in lines[0]
    # within one test image of each other: noise, not worth a word
    assert advice(options, _dataset(500), _metrics(0.796), {"float_top1": 0.80}, per_image=0.5) == []
    assert advice(options, _dataset(500), _metrics(0.85), {"float_top1": 0.80}, per_image=0.5) == []


def test_advice_names_the_folders_the_run_will_have(tmp_path):
    from edgecls.convert.staging import final_path

    staged = tmp_path / ".run.new-abc123"
    assert final_path(staged) == tmp_path / "run" and final_path(staged / "demo_data") == tmp_path / "run" / "demo_data"
    options = ConvertOptions.create(staged)
    (line,) = advice(options, _dataset(40), _metrics(0.9), None, per_image=1.0)
    assert f"--out {tmp_path / 'run'}-transfer" in line and ".new-" not in line
    assert advice(options.updated(recipe="demo"), _dataset(40), _metrics(0.5), {"float_top1": 0.9}, 1.0) == []


def test_few_images_per_class_from_scratch_points_to_transfer_learning(tmp_path):
    scratch = ConvertOptions.create(tmp_path / "run")
    (line,) = advice(scratch, _dataset(40), _metrics(0.9), None, per_image=1.0)
    assert "smallest class has 40 training images" in line and "--weights imagenet" in line
    transfer = ConvertOptions.create(tmp_path / "run", arch="mobilenet_v1")
    assert advice(transfer, _dataset(40), _metrics(0.9), None, per_image=1.0) == []
    random_mobilenet = ConvertOptions.create(tmp_path / "run", arch="mobilenet_v1", weights="none")
    assert len(advice(random_mobilenet, _dataset(40), _metrics(0.9), None, per_image=1.0)) == 1


@pytest.mark.parametrize("seconds, text", [(4.4, "4 s"), (125, "2 min 05 s"), (3780, "1 h 03 min"), (-1, "0 s")])
def test_durations_read_as_people_write_them(seconds, text):
    assert duration(seconds) == text


def test_a_pretrained_mobilenet_starts_from_the_measured_transfer_recipe():
    from edgecls.convert.recipes import TRANSFER, recipe

    name, filled = recipe("mobilenet_v1", {"alpha": 0.25, "weights": "/w/mobilenet.h5", "epochs": 3})
    assert name == "transfer" and filled == {k: v for k, v in TRANSFER.items() if k != "epochs"}
    assert filled["input_size"] == 160 and filled["int8_method"] == "int8-tune"
    assert recipe("mobilenet_v2", {})[0] == "transfer"  # weights default to imagenet
    assert recipe("mobilenet_v1", {"weights": "none"}) == (None, {})  # from random weights: not transfer
    assert recipe("seed-cnn", {}) == (None, {})  # the textbook CNN stays the textbook's


def test_the_compact_cnn_recipe_suits_photos_and_small_images():
    from edgecls.convert.recipes import COMPACT, recipe

    assert recipe("compact-cnn", {}) == ("compact", COMPACT)
    name, filled = recipe("compact-cnn", {"input_size": 28, "augment": 0.2})
    assert name == "compact-small" and "augment" not in filled and filled["width"] == COMPACT["width"]
    assert recipe("compact-cnn", {"input_size": 28})[1]["augment"] < COMPACT["augment"]
    assert recipe("compact-cnn", {"input_size": 64})[0] == "compact"


def test_the_command_line_defaults_are_the_options_defaults():
    """The command line hands the API only the flags a user gave, so the defaults its help shows must be the ones
    the options take when a flag is left out."""
    import typer

    from edgecls.cli.app import app

    command = typer.main.get_command(app).commands["convert"]
    defaults = {k.removeprefix("train."): v for k, v in ConvertOptions.create("run").flat().items()}
    shown = {p.name: getattr(p.default, "value", p.default) for p in command.params if p.name in defaults}
    assert len(shown) >= 35
    shown["split"] = tuple(float(x) / 100 for x in shown["split"].split(","))
    shown["class_weights"] = shown["class_weights"] != "none"
    shown["extra_data"] = tuple(shown["extra_data"] or ())  # a repeatable option: none given
    assert {k: v for k, v in shown.items() if v != defaults[k]} == {}


def test_the_compact_recipe_sizes_the_input_and_colour_from_the_images(tmp_path):
    from edgecls.convert.recipes import input_size_for, look_at, recipe
    from PIL import Image

    def images(root, size, mode, count=6):
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new(mode, size).save(root / cls / f"{i}.png")
        return root

    digits = images(tmp_path / "digits", (28, 28), "L")
    assert look_at(digits) == (28, True)
    name, filled = recipe("compact-cnn", {}, digits)
    assert name == "compact-small" and filled["input_size"] == 28 and filled["color"] == "grayscale"
    assert "color" not in recipe("compact-cnn", {"color": "rgb"}, digits)[1]  # the user's colour wins
    photos = images(tmp_path / "photos", (320, 240), "RGB")
    name, filled = recipe("compact-cnn", {}, photos)
    assert name == "compact" and filled["input_size"] == 128 and "color" not in filled
    assert recipe("compact-cnn", {"input_size": 64}, photos)[1].get("input_size") is None
    assert [input_size_for(side) for side in (16, 30, 40, 50, 70, 100, 127, 500)] == [16, 30, 48, 48, 64, 96, 96, 128]
    assert look_at(tmp_path / "nowhere") == (None, False)
