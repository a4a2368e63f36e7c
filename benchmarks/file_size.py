"""Where the bytes of an exported model go, and its int8 / float TFLite size ratio with and without compaction.

For each `edgecls convert` output folder: the int8 flatbuffer (model.tflite without the appended manifest) split
into weights (buffer data), quantisation parameters (scale and zero-point vectors), tensor names and the rest of the
graph; the same file through edgecls.convert.compact (a no-op on runs made since compaction, which already have it); and the
float TFLite file of model.keras converted the way convert does it, raw and compacted. The ratio convert reports
is compacted int8 / compacted float.

Run: python benchmarks/file_size.py OUT_DIR [OUT_DIR ...] [--json result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def breakdown(flat: bytes) -> dict[str, int]:
    """Bytes of weights, quantisation vectors and tensor names (each distinct vector or string counted once, as
    stored), and the rest."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flat, 0)
    weights = sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength()))
    quant: dict[int, int] = {}
    names: dict[int, int] = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            name_field = tensor._tab.Offset(8)  # field 2: name
            if name_field:
                names[tensor._tab.Indirect(tensor._tab.Pos + name_field)] = 4 + len(tensor.Name() or b"") + 1
            q = tensor.Quantization()
            if q is None:
                continue
            for field, width in ((8, 4), (10, 8)):  # scale (float32), zero_point (int64)
                if q._tab.Offset(field):
                    quant[q._tab.Vector(q._tab.Offset(field))] = 4 + width * q._tab.VectorLen(q._tab.Offset(field))
    out = {"file": len(flat), "weights": weights, "quantisation": sum(quant.values()), "names": sum(names.values())}
    out["graph_and_padding"] = out["file"] - weights - out["quantisation"] - out["names"]
    return out


def measure(run: Path) -> dict[str, object]:
    import keras
    from edgecls.convert.compact import compact
    from edgecls.convert.tflite_export import to_tflite

    from edgecls.model.metadata import flatbuffer_bytes

    written = flatbuffer_bytes((run / "model.tflite").read_bytes())
    model = keras.models.load_model(run / "model.keras", compile=False)
    float_raw = to_tflite(model, mode="none", compacted=False)
    float_compact = compact(float_raw)
    int8_compact = compact(written)
    return {
        "run": str(run),
        "int8_as_written": breakdown(written),
        "int8_compacted": breakdown(int8_compact),
        "float_raw_bytes": len(float_raw),
        "float_compacted_bytes": len(float_compact),
        "ratio_as_written_vs_raw_float": round(len(written) / len(float_raw), 4),
        "ratio_compacted": round(len(int8_compact) / len(float_compact), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="edgecls convert output folders")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = [measure(run) for run in args.runs]
    print("| run | int8 as written | weights | quantisation | names | graph | compacted | ratio before | ratio after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        w, c = r["int8_as_written"], r["int8_compacted"]
        print(
            f"| {r['run']} | {w['file']:,} | {w['weights']:,} | {w['quantisation']:,} | {w['names']:,} | "
            f"{w['graph_and_padding']:,} | {c['file']:,} (q {c['quantisation']:,}, names {c['names']:,}) | "
            f"{r['ratio_as_written_vs_raw_float']:.4f} | {r['ratio_compacted']:.4f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
