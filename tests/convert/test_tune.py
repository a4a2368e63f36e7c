"""`edgecls tune`: a tiny real search end to end, the Pareto and budget logic, impossible budgets, resuming after a
real Ctrl-C, and reproducible sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import IN_CI, ctrl_c_when, tensorflow_or_skip
from typer.testing import CliRunner

from edgecls.cli.app import app

pytestmark = pytest.mark.slow  # trains or converts real models

runner = CliRunner()
FAST = [
    "--max-epochs",
    "1",
    "--input-sizes",
    "32",
    "--calibration-samples",
    "20",
    "--max-drop",
    "100",
    "--min-agreement",
    "0",
]  # plumbing: 1-epoch trials on 6 test images


@pytest.fixture(scope="module", autouse=True)
def _deps():
    tensorflow_or_skip()
    try:
        import optuna  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("optuna (the 'tune' extra) is required under CI=true")
        pytest.skip("optuna is not installed (pip install 'edgecls[tune]')")


def tune(*args):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["tune", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def tiny_run(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    result = tune(shapes, "--out", out, "--trials", "3", "--budget-ms", "1000", "--max-size-kb", "10000", *FAST)
    assert result.exit_code == 0, result.output
    return out, result


def test_tiny_search_end_to_end(tiny_run, shapes):
    out, result = tiny_run
    for name in (
        "study.db",
        "tuning.json",
        "tuning.md",
        "pareto.png",
        "model.tflite",
        "report.json",
        "report.md",
        "confusion_matrix.png",
        "labels.txt",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "tuning.json").read_text())
    assert len(summary["trials"]) == 3
    done = [t for t in summary["trials"] if t["state"] == "complete"]
    assert done and all(t["latency_ms"] > 0 and t["size_kb"] > 0 and 0 <= t["accuracy"] <= 1 for t in done)
    chosen = summary["chosen"]
    assert chosen["feasible"] and chosen["number"] in summary["pareto_front"]
    assert chosen["accuracy"] == max(t["accuracy"] for t in done if t["feasible"])
    # the chosen trial is exported exactly as convert would: parity report on the test split
    report = json.loads((out / "report.json").read_text())
    assert report["test_source"] == "test" and "agreement" in report and report["model"]["input_size"] == 32
    for n in range(3):
        assert (out / "trials" / f"{n:04d}").is_dir()
    assert "trial 0 (1/3 done)" in result.output and "chosen: trial" in result.output
    classify = runner.invoke(app, ["classify", str(out / "model.tflite"), str(shapes / "circle" / "circle_0000.png")])
    assert classify.exit_code == 0, classify.output  # needs no other flag


def record(n, acc, lat, size, feasible=True):  # type: ignore[no-untyped-def]
    from edgecls.convert.tune import TrialRecord

    return TrialRecord(
        number=n, state="complete", params={}, accuracy=acc, latency_ms=lat, size_kb=size, feasible=feasible
    )


def test_pareto_front_and_budget_choice():
    from edgecls.convert.tune import TrialRecord, choose, pareto_front

    records = [
        record(0, 0.80, 10.0, 500, feasible=False),  # most accurate, over the latency budget
        record(1, 0.75, 4.0, 200),
        record(2, 0.70, 5.0, 300),  # dominated by 1 on every axis
        record(3, 0.60, 1.0, 100),
        record(4, 0.75, 4.0, 150),  # as good as 1 and smaller: 1 is dominated
        TrialRecord(number=5, state="pruned", params={}),
    ]
    assert [r.number for r in pareto_front(records)] == [0, 4, 3]
    assert choose(records).number == 4
    assert choose([r for r in records if r.number in (0, 5)]) is None


def test_no_feasible_trial_message():
    from edgecls.convert.pipeline import ConvertOptions
    from edgecls.convert.tune import TuneOptions, _no_feasible_message

    options = TuneOptions(base=ConvertOptions(out_dir=Path("/tmp/x")), budget_ms=1.0, max_size_kb=50)
    message = _no_feasible_message(options, [record(0, 0.5, 3.0, 80, False), record(1, 0.4, 2.5, 120, False)])
    assert "the fastest took 2.500 ms (--budget-ms 1)" in message and "the smallest was 80.0 KB" in message


def test_impossible_budget_is_a_clear_error_before_any_trial(shapes, tmp_path):
    result = tune(shapes, "--out", tmp_path / "o", "--trials", "2", "--budget-ms", "0.000001", *FAST)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "--budget-ms 1e-06 is impossible for compact-cnn" in lines[0] and "smallest model" in lines[0]
    assert not (tmp_path / "o" / "trials").exists()
    size = tune(shapes, "--out", tmp_path / "p", "--trials", "2", "--max-size-kb", "0.5", *FAST)
    assert size.exit_code == 1 and "--max-size-kb 0.5 is impossible" in size.stderr


def test_qat_and_bad_options(shapes, tmp_path):
    bad = tune(shapes, "--out", tmp_path / "o", "--profile", "coral-dev-board", *FAST)
    assert bad.exit_code == 2 and "has no latency_factor" in bad.output
    sizes = tune(shapes, "--out", tmp_path / "o", "--input-sizes", "a,b")
    assert sizes.exit_code == 2 and "--input-sizes expects numbers" in sizes.output


def test_profile_scales_latency(shapes, tmp_path, tiny_run):
    from edgecls.convert.pipeline import ConvertOptions
    from edgecls.convert.tune import TuneOptions, measure_latency

    model = tiny_run[0] / "model.tflite"
    base = ConvertOptions(out_dir=tmp_path)
    plain = measure_latency(model, TuneOptions(base=base))
    scaled = measure_latency(model, TuneOptions(base=base, latency_factor=10.0, profile="rpi3b-plus"))
    assert scaled > 4 * plain  # the factor applies (timing noise aside)


def test_same_seed_samples_the_same_trials(tmp_path):
    from edgecls.convert.pipeline import ConvertOptions
    from edgecls.convert.tune import TuneOptions, open_study, suggest

    def first_params(folder: Path, seed: int) -> list[dict]:
        options = TuneOptions(base=ConvertOptions(out_dir=folder), seed=seed)
        study = open_study(options, folder)
        params = []
        for _ in range(3):
            trial = study.ask()
            params.append(suggest(trial, options))
            study.tell(trial, 0.5)
        return params

    assert first_params(tmp_path / "a", 7) == first_params(tmp_path / "b", 7)
    assert first_params(tmp_path / "c", 7) != first_params(tmp_path / "d", 8)


def test_resume_after_a_real_interruption(shapes, tmp_path):
    out = tmp_path / "study"
    code, output = ctrl_c_when(
        ["tune", shapes, "--out", out, "--trials", "3", *FAST], lambda line: line.startswith("trial 0 (1/3 done)")
    )  # Ctrl-C during trial 1
    assert code == 130, output
    # The handler only sets a flag that training checks after every batch: an asynchronous KeyboardInterrupt raised
    # while TensorFlow traced a function was once swallowed, and the search ran on to the end.
    assert "stopping after this training batch" in output
    assert "finished trials are kept" in output and "Traceback" not in output
    summary = json.loads((out / "tuning.json").read_text())
    assert summary["interrupted"] is True
    assert [t["state"] for t in summary["trials"]][:1] == ["complete"]

    result = tune(shapes, "--out", out, "--trials", "3", *FAST)
    assert result.exit_code == 0, result.output
    assert "resuming: 1 of 3 trials already done" in result.output
    states = [t["state"] for t in json.loads((out / "tuning.json").read_text())["trials"]]
    assert states.count("complete") + states.count("pruned") == 3  # the interrupted trial is not counted

    other = tune(shapes, "--out", out, "--trials", "3", "--arch", "seed-cnn", *FAST)
    assert other.exit_code == 1 and "holds a study with other settings (arch" in other.stderr


def test_training_stops_at_the_batch_after_should_stop_says_so(shapes):
    from edgecls.convert.data import scan
    from edgecls.convert.models import ModelSpec, create_model
    from edgecls.convert.training import TrainConfig, make_strategy, train

    dataset = scan(shapes, input_size=(32, 32), channels=3, seed=0)
    model = create_model("compact-cnn", ModelSpec(num_classes=3, input_size=32, width=8, depth=1))
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) >= 3

    with pytest.raises(KeyboardInterrupt):
        train(
            model,
            dataset,
            TrainConfig(epochs=5, batch_size=4, augment=0.0),
            sigmoid=False,
            checkpoint_dir=Path(shapes).parent / "ckpt",
            strategy=make_strategy("default"),
            should_stop=should_stop,
        )
    assert len(asked) == 3  # asked once per batch; the third answer stopped it inside the first epoch
