"""The verdict without training: the parity gate, its message, the warnings and the report's verdict keys, on
made-up metrics (the runs that produce real ones are in test_convert_pipeline.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from edgecls.convert import gate
from edgecls.convert.options import ConvertOptions


class Split:
    """What the gate reads of a Dataset: the held-out images, the class counts, where the test images came from."""

    def __init__(self, n_test: int, train: dict[str, int], test: dict[str, int]) -> None:
        self.samples = {"test": [SimpleNamespace(path=f"{i}.jpg", label=0) for i in range(n_test)]}
        self._counts = {"train": train, "test": test}
        self.test_source = "test"
        self.root = Path("/data/photos")

    def counts(self, part: str) -> dict[str, int]:
        return self._counts[part]


def _metrics(float_top1: float, int8_top1: float, agreement: float) -> dict:
    drop = round(100 * (float_top1 - int8_top1), 2)
    return {"float": {"top1": float_top1}, "int8": {"top1": int8_top1}, "agreement": agreement, "drop_points": drop}


def test_the_gate_fails_on_a_drop_or_on_disagreement_and_says_which():
    options = ConvertOptions.create("run")
    assert gate.gate_failures(_metrics(0.9, 0.9, 0.95), options) == []
    (drop,) = gate.gate_failures(_metrics(0.9, 0.85, 0.95), options)
    assert drop == "int8 top-1 is 5.00 points below float, more than --max-drop 1.00"
    (agree,) = gate.gate_failures(_metrics(0.9, 0.9, 0.5), options)
    assert "agree on the top-1 class of 50.0% of the test images, under --min-agreement 90%" in agree
    assert len(gate.gate_failures(_metrics(0.9, 0.5, 0.5), options)) == 2
    float16 = ConvertOptions.create("run", quant="float16")
    assert gate.gate_failures(_metrics(0.9, 0.85, 0.95), float16)[0].startswith("tflite top-1")


def test_a_failed_gate_names_what_to_try_with_the_method_that_ran():
    failures = ["int8 top-1 is 5.00 points below float"]
    assert "--int8-method int8-tune" in gate.gate_message(failures, ConvertOptions.create("run"))
    tuned = ConvertOptions.create("run", int8_method="int8-tune")
    assert gate.gate_message(failures, tuned).endswith("Try more --int8-tune-epochs.")
    assert "--qat-epochs" in gate.gate_message(failures, ConvertOptions.create("run", int8_method="qat"))


def test_the_verdict_keys_say_what_one_image_is_worth_and_whether_the_model_learned_anything():
    split = Split(6, {"a": 500, "b": 500}, {"a": 4, "b": 2})
    options = ConvertOptions.create("run", arch="mobilenet_v1")
    judged = gate.verdict(options, split, _metrics(0.5, 0.5, 1.0))
    assert judged["points_per_image"] == 16.667 and judged["test_images"] == 6
    assert judged["learned_nothing"] and judged["passed"] and judged["gate_message"] is None
    warnings = gate.warnings_for(options, split, _metrics(0.5, 0.5, 1.0), None, trained=True)
    assert len(warnings) == 2 and "no better than always answering 'a'" in warnings[0]
    assert "one image is 16.67 points of top-1, more than the --max-drop of 1.00" in warnings[1]
    failed = gate.verdict(options, split, _metrics(0.9, 0.5, 0.5))
    assert not failed["passed"] and "did not pass" in failed["gate_message"] and not failed["learned_nothing"]


def test_a_failed_qat_run_that_post_training_int8_would_have_passed_says_so():
    report = {"passed": False, "gate_message": "int8 top-1 is 3.00 points below float."}
    gate.point_to_ptq(report, {"drop_points": 0.5}, {"drop_points": 3.0})
    assert report["gate_message"].endswith("lost only 0.50 points on this model: run without --int8-method qat.")
    passed = {"passed": True, "gate_message": None}
    gate.point_to_ptq(passed, {"drop_points": 0.5}, {"drop_points": 3.0})
    assert passed["gate_message"] is None


def test_settings_record_only_what_applied_to_the_run():
    compact = gate.settings(ConvertOptions.create("run", extra_data=["/more"]))
    assert "width" in compact and "alpha" not in compact and "teacher_weight" not in compact
    assert compact["extra_data"] == ["/more"] and "qat_epochs" not in compact
    mobilenet = gate.settings(ConvertOptions.create("run", arch="mobilenet_v2", int8_method="qat", teacher="t"))
    assert {"alpha", "train.fine_tune_epochs", "qat_epochs", "teacher_weight"} <= set(mobilenet)
    assert mobilenet["teacher"] == "t" and "width" not in mobilenet
