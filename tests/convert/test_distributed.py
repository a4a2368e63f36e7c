"""`--strategy multi-worker` and `--strategy mirrored` for real: two worker processes on 127.0.0.1 train one model
through tf.distribute, the chief alone writes the run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import TINY, convert, one_error_line, tensorflow_or_skip

EPOCH_LINE = re.compile(r"^\s+train\s+\d+/\d+\s+loss .*$", re.MULTILINE)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


@pytest.mark.slow
def test_two_workers_train_one_model_and_only_the_chief_writes(shapes, tmp_path):
    tensorflow_or_skip()
    ports = _free_ports(2)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    flags = [f for f in TINY if f != "--no-baseline"]  # the chief trains the baseline alone, after the cluster
    epochs = flags.index("--epochs")
    flags[epochs + 1] = "4"
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": _tf_config(ports, index), "TMPDIR": str(scratch)}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgecls",
                    "convert",
                    str(shapes),
                    "--out",
                    str(tmp_path / f"out{index}"),
                    "--strategy",
                    "multi-worker",
                    *flags,
                    "--batch-size",
                    "8",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        outputs.append(out)
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(o[-3000:] for o in outputs)
    assert "Traceback" not in outputs[0] + outputs[1]

    # one model: the gradients were summed across the two workers each step, so every epoch's (reduced) figures
    # are the same on both
    chief_epochs, other_epochs = EPOCH_LINE.findall(outputs[0]), EPOCH_LINE.findall(outputs[1])
    strip = [re.sub(r"\s+[\d.]+ s(, left <= .*)?$", "", line) for line in chief_epochs]
    assert len(chief_epochs) == 4 and strip == [
        re.sub(r"\s+[\d.]+ s(, left <= .*)?$", "", line) for line in other_epochs
    ]
    assert "left <=" in chief_epochs[0] and "left <=" not in chief_epochs[-1]

    report = json.loads((tmp_path / "out0" / "report.json").read_text())
    cluster = report["history"]["cluster"]
    assert cluster["workers"] == 2 and cluster["replicas"] == 2 and cluster["global_batch"] == 8
    assert cluster["train_images_per_worker"] == [15, 15]  # 30 training images, sharded
    assert len(report["history"]["epoch_s"]) == 4 and report["baseline"]["arch"] == "seed-cnn"
    assert "s per epoch on 2 workers" in (tmp_path / "out0" / "report.md").read_text()
    assert (tmp_path / "out0" / "model.tflite").is_file()
    # the other worker trained in a temporary folder, removed, and never made its --out
    assert not (tmp_path / "out1").exists() and list(scratch.iterdir()) == []
    assert "worker 1 of 2 workers: trained its shard; the chief wrote the run" in outputs[1]


@pytest.mark.slow
def test_a_worker_that_dies_is_one_error_line_on_the_other(shapes, tmp_path):
    tensorflow_or_skip()
    ports = _free_ports(2)
    flags = [*TINY]
    flags[flags.index("--epochs") + 1] = "200"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgecls",
                "convert",
                str(shapes),
                "--out",
                str(tmp_path / f"out{index}"),
                "--strategy",
                "multi-worker",
                *flags,
            ],
            env={**os.environ, "TF_CONFIG": _tf_config(ports, index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if index else subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    for line in procs[1].stdout:  # once the cluster trains, worker 1 is killed
        if EPOCH_LINE.match(line):
            break
    procs[1].kill()
    procs[1].communicate()
    _, stderr = procs[0].communicate(timeout=300)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert procs[0].returncode == 1 and len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "another worker failed or cannot be reached" in errors[0]
    assert not (tmp_path / "out0").exists() and not list(tmp_path.glob(".out0*"))  # nothing half-written


@pytest.mark.slow
def test_mirrored_strategy_trains_to_the_end(shapes, tmp_path):
    tensorflow_or_skip()
    result = convert(shapes, "--out", tmp_path / "run", "--strategy", "mirrored", *TINY)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["settings"]["train.strategy"] == "mirrored" and len(report["history"]["loss"]) == 3


@pytest.mark.parametrize(
    "config, words",
    [
        (None, "needs TF_CONFIG on every worker"),
        ("{not json", "TF_CONFIG is not a cluster and a task"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not a cluster and a task"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "is not in the cluster"),
    ],
)
def test_a_bad_tf_config_is_one_clear_error(monkeypatch, config, words):
    from edgecls.convert.distributed import cluster_spec

    from edgecls.errors import ConfigError

    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(ConfigError, match=words):
        cluster_spec()


def test_bad_tf_config_on_the_command_line(shapes, tmp_path, monkeypatch):
    tensorflow_or_skip()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    result = convert(shapes, "--out", tmp_path / "run", "--strategy", "multi-worker", *TINY)
    assert "TF_CONFIG is not a cluster and a task" in one_error_line(result)
    assert not (tmp_path / "run").exists()
