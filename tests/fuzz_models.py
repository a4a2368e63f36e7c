"""Seeded hostile variants of a real Coral model, run through `edgecls info`, `classify` and `check`.

Each case is a mutated copy of mobilenet_v1_0.25_128_quant.tflite: truncations, byte flips, zeroed regions, appended
garbage, a graph with no operators, and hostile metadata zips (a labels bomb, corrupt deflate, an encrypted entry, an
unknown compression method, a deeply nested or ill-typed manifest). A case passes when every command ends with exit
code 0 or 1 (or 3 for a negative `check` verdict), prints no traceback, does not crash the process and ends within its time.

The commands run in worker processes (``python tests/fuzz_models.py --worker``) that take cases one by one from
stdin, so a crash (a signal in native code) or a hang costs one worker, is recorded against its case, and a new
worker goes on with the next case. Run as a script for a larger count:

    python tests/fuzz_models.py --cases 1700 --seed 1 [--report out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORAL = HERE.parent.parent / "shared" / "data" / "coral"
MODEL = CORAL / "mobilenet_v1_0.25_128_quant.tflite"
IMAGE = CORAL / "cat.bmp"
OK_CODES = {"info": {0, 1}, "classify": {0, 1}, "check": {0, 1, 3}}


# -- the mutations -----------------------------------------------------------------------------------------------


def _flatbuffer(model: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(model)) as zf:
        return model[: min(i.header_offset for i in zf.infolist())]


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in entries:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def _labels_bomb() -> bytes:
    """A zip whose one entry inflates to 1 GiB from about 1 MB (header sizes true: only the size is hostile)."""
    unit = b"a" * (1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = b"".join(comp.compress(unit) for _ in range(1024)) + comp.flush()
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(unit, crc)
    name = b"labels.txt"
    size = 1 << 30
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(body), size, len(name), 0) + name
    central = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(body), size, len(name), 0, 0, 0, 0, 0, 0
        )
        + name
    )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    return local + body + central + end


def _patch_zip(data: bytes, entry_flag: int | None = None, method: int | None = None, corrupt: bool = False) -> bytes:
    """Edit the first entry of a zip in place: its flags (1: encrypted), its compression method, or its deflate
    stream (bytes flipped after the header)."""
    raw = bytearray(data)
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.find(sig)
        if entry_flag is not None:
            raw[at + flag_at : at + flag_at + 2] = struct.pack("<H", entry_flag)
        if method is not None:
            raw[at + method_at : at + method_at + 2] = struct.pack("<H", method)
    if corrupt:
        start = raw.find(b"PK\x03\x04") + 30 + struct.unpack_from("<H", raw, raw.find(b"PK\x03\x04") + 26)[0]
        for i in range(start + 2, min(start + 40, len(raw))):
            raw[i] ^= 0x5A
    return bytes(raw)


def _manifest(body: object) -> bytes:
    return json.dumps(body).encode() if not isinstance(body, bytes) else body


def _graph_edit(
    flat: bytes, field: int, *, length: int | None = None, first: int | None = None, op_field: int | None = None
) -> bytes:
    """The model with one vector of the first subgraph edited: ``field`` 1 inputs, 2 outputs, 3 operators; its
    ``length`` set, or its ``first`` item replaced; with ``op_field``, the first operator's inputs (1) or outputs (2)."""
    sys.path.insert(0, str(HERE.parent))
    from edgecls.model.flatbuffer import _Table

    model = _Table(flat, struct.unpack_from("<I", flat, 0)[0])
    table = model.tables(2)[0]
    if op_field is not None:
        table = table.tables(3)[0]
        field = op_field
    start, _ = table.vector(field, 4)
    raw = bytearray(flat)
    if length is not None:
        raw[start - 4 : start] = struct.pack("<I", length)
    if first is not None:
        raw[start : start + 4] = struct.pack("<i", first)
    return bytes(raw)


def _output_scale(flat: bytes, value: float) -> bytes:
    """The model with its output tensor's quantisation scale set to ``value`` (NaN, 0, negative)."""
    from edgecls.model.flatbuffer import _Table

    subgraph = _Table(flat, struct.unpack_from("<I", flat, 0)[0]).tables(2)[0]
    output = subgraph.numbers(2, "i")[0]
    start, _ = subgraph.tables(0)[output].table(4).vector(2, 4)
    raw = bytearray(flat)
    raw[start : start + 4] = struct.pack("<f", value)
    return bytes(raw)


def graph_cases(flat: bytes) -> dict[str, bytes]:
    return {
        "output-scale-nan": _output_scale(flat, float("nan")),
        "output-scale-negative": _output_scale(flat, -1.0),
        "output-scale-inf": _output_scale(flat, float("inf")),
        "no-operators": _graph_edit(flat, 3, length=0),
        "no-inputs": _graph_edit(flat, 1, length=0),
        "no-outputs": _graph_edit(flat, 2, length=0),
        "input-index-out-of-range": _graph_edit(flat, 1, first=99999),
        "output-index-negative": _graph_edit(flat, 2, first=-5),
        "op-input-out-of-range": _graph_edit(flat, 0, op_field=1, first=99999),
        "op-output-out-of-range": _graph_edit(flat, 0, op_field=2, first=99999),
        "inputs-length-huge": _graph_edit(flat, 1, length=0x7FFFFFFF),
    }


def hostile_metadata(flat: bytes, labels: bytes) -> dict[str, bytes]:
    """The named metadata cases: the flatbuffer with each hostile zip appended."""
    deflate = zipfile.ZIP_DEFLATED
    nested = b'{"format": "edgecls-manifest", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    good = _zip([("labels.txt", labels, deflate)])
    cases = {
        "labels-bomb": _labels_bomb(),
        "corrupt-deflate": _patch_zip(good, corrupt=True),
        "encrypted-entry": _patch_zip(good, entry_flag=1),
        "unknown-compression": _patch_zip(good, method=99),
        "nested-manifest": _zip([("edgecls_manifest.json", nested, deflate)]),
        "manifest-not-utf8": _zip([("edgecls_manifest.json", b"\xff\xfe{", 0)]),
        "many-entries": _zip([(f"f{i}.txt", b"x", 0) for i in range(5000)]),
        "labels-binary": _zip([("labels.txt", os.urandom(4096), 0)]),
        "labels-empty": _zip([("labels.txt", b"", 0)]),
    }
    typed = {
        "preprocess-string": {"preprocess": "center-crop"},
        "preprocess-bad-values": {"preprocess": {"resize": 7, "interpolation": None, "mean": "x", "std": [0, 0, 0]}},
        "labels-not-a-list": {"labels": {"a": 1}},
        "labels-wrong-count": {"labels": ["a", "b"]},
        "labels-not-strings": {"labels": [1, None, [2]] * 334},
        "output-bad": {"output": {"activation": "relu"}},
        "output-not-a-dict": {"output": 5},
        "provenance-odd": {"provenance": [1, 2]},
        "manifest-a-list": ["edgecls-manifest"],
    }
    for name, body in typed.items():
        manifest = {"format": "edgecls-manifest", "version": 1, **body} if isinstance(body, dict) else body
        cases[f"manifest-{name}"] = _zip([("edgecls_manifest.json", _manifest(manifest), deflate)])
    return {name: flat + z for name, z in cases.items()}


def make_cases(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` cases: the named hostile ones first, then seeded random mutations."""
    model = MODEL.read_bytes()
    flat = _flatbuffer(model)
    with zipfile.ZipFile(io.BytesIO(model)) as zf:
        labels = zf.read(zf.infolist()[0])
    cases = [(f"metadata:{name}", data) for name, data in hostile_metadata(flat, labels).items()]
    cases += [(f"graph:{name}", data) for name, data in graph_cases(flat).items()]
    cases += [("truncate:8", model[:8]), ("truncate:flatbuffer-end", flat), ("empty", b"")]
    rng = random.Random(seed)
    kinds = ["truncate", "flip", "zero", "append", "flip-head", "zero-head"]
    while len(cases) < count:
        kind = kinds[len(cases) % len(kinds)]
        data = bytearray(model)
        if kind == "truncate":
            n = rng.randrange(0, len(model))
            data = data[:n]
        elif kind == "flip":
            for _ in range(rng.choice([1, 4, 32])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "flip-head":  # the tables and vectors are at both ends; buffers in the middle
            region = rng.choice([(0, 4096), (len(flat) - 8192, len(flat))])
            for _ in range(rng.choice([1, 2, 8])):
                data[rng.randrange(*region)] ^= 1 << rng.randrange(8)
        elif kind in ("zero", "zero-head"):
            start = rng.randrange(0, 4096) if kind == "zero-head" else rng.randrange(len(data))
            length = rng.choice([4, 64, 1024, 16384])
            data[start : start + length] = bytes(len(data[start : start + length]))
        else:
            data += os.urandom(rng.choice([1, 100, 10000]))
        cases.append((f"{kind}:{len(cases)}", bytes(data)))
    return cases[:count]


# -- running them --------------------------------------------------------------------------------------------------


def worker() -> None:
    """Read one JSON request per stdin line ({path, command}); answer one JSON line per request."""
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    runner = CliRunner()
    for line in sys.stdin:
        req = json.loads(line)
        args = {
            "info": ["info", req["path"]],
            "classify": ["classify", req["path"], str(IMAGE)],
            "check": ["check", req["path"]],
        }[req["command"]]
        result = runner.invoke(app, args)
        out = (result.stdout or "") + (result.stderr or "")
        exc = result.exception if not isinstance(result.exception, SystemExit) else None
        print(
            json.dumps(
                {
                    "code": result.exit_code,
                    "traceback": "Traceback" in out or exc is not None,
                    "exception": repr(exc)[:300] if exc else None,
                    "tail": out[-300:],
                }
            ),
            flush=True,
        )


class Pool:
    """One worker process at a time, restarted after a crash or a hang."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        return subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            bufsize=1,
        )

    def run(self, path: str, command: str) -> dict:
        import select

        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        self.proc.stdin.write(json.dumps({"path": path, "command": command}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout + (20 if command == "info" else 0))
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return {"code": None, "hang": True}
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"code": None, "crash": code}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(10)


def run_cases(
    count: int,
    seed: int,
    timeout: float = 20.0,
    commands: tuple[str, ...] = ("info", "classify", "check"),
    workdir: Path | None = None,
) -> dict:
    cases = make_cases(count, seed)
    bad: list[dict] = []
    tally = {"cases": len(cases), "runs": 0, "clean": 0, "exit_0": 0, "exit_1": 0, "exit_3": 0}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        pool = Pool(timeout)
        start = time.monotonic()
        try:
            for name, data in cases:
                path = Path(tmp) / "model.tflite"
                path.write_bytes(data)
                for command in commands:
                    r = pool.run(str(path), command)
                    tally["runs"] += 1
                    fine = r.get("code") in OK_CODES[command] and not r.get("traceback")
                    if fine:
                        tally["clean"] += 1
                        tally[f"exit_{r['code']}"] += 1
                    else:
                        bad.append({"case": name, "command": command, **r})
        finally:
            pool.close()
        tally["seconds"] = round(time.monotonic() - start, 1)
    return {**tally, "failures": bad}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fuzz edgecls info/classify/check with mutated Coral models")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    report = run_cases(args.cases, args.seed)
    text = json.dumps(report, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}))
    for f in report["failures"][:40]:
        print(json.dumps(f))
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
