"""The `edgecls` command line: a thin Typer layer over the library.

Every project error becomes one line on stderr and exit code 1; usage errors are Typer's (exit code 2); a negative
verdict (a failed parity gate, a model the accelerator will not map, a latency over budget) is exit code 3.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from edgecls import __version__
from edgecls.cli.common import error, examples, interrupted, project_errors, setup_logging
from edgecls.errors import EXIT_VERDICT, EdgeclsError

_SETTINGS: dict[str, Any] = {
    "name": "edgecls",
    "help": "Image classification from workstation to small devices: run, inspect and convert int8 TFLite models.",
    "no_args_is_help": True,
    # Help texts escape a "[" that rich would read as markup (\\\\[default: 1]); tests/test_project.py checks them all.
    "rich_markup_mode": "rich",
    "pretty_exceptions_enable": False,
}
# The commands defined here; `app` (below) is this plus the workstation's commands, `main` runs only what it needs.
app = typer.Typer(**_SETTINGS)

DEVICE, INSPECT, SHIP, HOST = (
    "Classify on the device",
    "Inspect and measure",
    "Deploy to a device",
    "Train and convert (workstation, TensorFlow)",
)


class BackendChoice(str, Enum):
    auto = "auto"
    ai_edge_litert = "ai_edge_litert"
    tflite_runtime = "tflite_runtime"
    tensorflow = "tensorflow"


ModelArg = Annotated[Path, typer.Argument(help="Path to a .tflite model.", show_default=False, readable=False)]
LabelsOpt = Annotated[
    Path | None,
    typer.Option("--labels", readable=False, help="Label file (one a line, or 'id label'); default: from the model."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="Interpreter threads (default: cores, max 4).")
]
BackendOpt = Annotated[BackendChoice, typer.Option("--backend", help="Interpreter backend.")]
DelegateOpt = Annotated[
    str | None, typer.Option("--delegate", help="'edgetpu' or the path of a TFLite delegate library.")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Edge TPU device: usb, usb:N or pci:N.")]
DelegateOptionOpt = Annotated[
    list[str] | None,
    typer.Option("--delegate-option", help="KEY=VALUE option for the delegate library (repeatable)."),
]
FallbackOpt = Annotated[
    bool,
    typer.Option(
        "--allow-cpu-fallback", help="If the delegate cannot load, warn and run on the CPU instead of failing."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="Hide scores below this.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgecls {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="More log lines on stderr: -v info, -vv debug (or set EDGECLS_LOG=debug|info|warning|error).",
        ),
    ] = 0,
) -> None:
    """Image classification from workstation to small devices."""
    # Library warnings (a delegate fallen back to the CPU, a heavy backend in use) go to stderr as one line each;
    # -v adds what each step does, -vv the details, and lets TensorFlow's own log through during convert and tune.
    setup_logging(verbose)


def _open_classifier(
    model: Path,
    *,
    labels: Path | None = None,
    threads: int | None = None,
    backend: BackendChoice = BackendChoice.auto,
    delegate: str | None = None,
    device: str | None = None,
    delegate_option: list[str] | None = None,
    allow_cpu_fallback: bool = False,
) -> Any:
    from edgecls.model.classifier import Classifier
    from edgecls.nativelog import quiet_native_stderr

    with quiet_native_stderr():
        clf = Classifier(
            model,
            labels=labels,
            num_threads=threads,
            backend=backend.value,
            delegate=delegate,
            device=device,
            delegate_options=parse_key_values(delegate_option, "--delegate-option"),
            allow_cpu_fallback=allow_cpu_fallback,
        )
    return clf  # a CPU fallback was logged as a warning (on stderr, see _main)


def parse_key_values(items: list[str] | None, option: str) -> dict[str, str]:
    """``["k=v", ...]`` from a repeatable option into a dict; a malformed item is a ConfigError naming the option."""
    from edgecls.errors import ConfigError

    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE (received {item!r})")
        result[key.strip()] = value
    return result


@app.command(
    rich_help_panel=INSPECT, epilog=examples("edgecls info model.tflite", "edgecls info model_edgetpu.tflite --json")
)
def info(
    model: ModelArg,
    labels: LabelsOpt = None,
    backend: BackendOpt = BackendChoice.auto,
    json_out: JsonOpt = False,
) -> None:
    """Show a model's input, outputs, labels (and where they came from), backend, ops and metadata."""
    from edgecls.errors import NotAClassifierError
    from edgecls.model.metadata import check_model_file

    with project_errors():
        if check_model_file(model).has_edgetpu_op():
            facts = _describe_compiled(model, labels)  # no interpreter here can run it: read the file instead
        else:
            try:
                with _open_classifier(model, labels=labels, backend=backend) as clf:
                    facts = clf.describe()
            except NotAClassifierError as exc:  # still worth describing: say what it is instead
                facts = _describe_compiled(model, labels, not_a_classifier=exc.problem)
    if json_out:
        typer.echo(json.dumps(facts, indent=2))
        return
    typer.echo(_format_info(facts))


def _describe_compiled(model: Path, labels: Path | None, not_a_classifier: str | None = None) -> dict[str, Any]:
    """`info` from the flatbuffer alone: for an Edge TPU build (its one op runs only on the Edge TPU), or for a model
    that is not an image classifier (``not_a_classifier``: why), with every input and output listed."""
    from collections import Counter

    from edgecls.model.flatbuffer import read_graph
    from edgecls.model.labels import labels_for_file
    from edgecls.model.metadata import check_model_file

    info = check_model_file(model)
    graph = read_graph(info.path)
    found = labels_for_file(info, labels)  # a labels file that does not fit the output is refused for either kind
    if not_a_classifier is not None:
        kind = {
            "not_a_classifier": not_a_classifier,
            "inputs": _tensor_facts(graph, graph.inputs),
            "outputs": _tensor_facts(graph, graph.outputs),
        }
    else:
        kind = _edgetpu_classifier_facts(info, graph, found)
    return {
        "path": str(info.path),
        "size_bytes": info.size_bytes,
        **kind,
        "ops": dict(Counter(op.name for op in graph.operators).most_common()),
        "metadata_files": sorted(info.associated_files),
        "manifest": info.manifest,
    }


def _tensor_facts(graph: Any, indices: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"shape": list(graph.tensors[i].shape), "dtype": graph.tensors[i].dtype} for i in indices]


def _edgetpu_classifier_facts(info: Any, graph: Any, found: Any) -> dict[str, Any]:
    """What `Classifier.describe` would say of an Edge TPU build, read from its file: its one input and output, the
    labels, the manifest's preprocessing, and the CPU model beside it."""
    from edgecls.model.metadata import cpu_sibling
    from edgecls.model.postprocess import OutputSpec

    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    cpu = cpu_sibling(info.path)
    manifest = info.manifest or {}

    def quant(t: Any) -> Any:
        return {"scale": t.scales[0], "zero_point": t.zero_points[0]} if t.scales and t.zero_points else None

    channels = inp.shape[-1] if inp.shape else 0
    return {
        "backend": {
            "name": "none",
            "version": "(compiled for the Edge TPU: run it with --delegate edgetpu)",
            "num_threads": 0,
        },
        "delegate": None,
        "compiled_for": "edgetpu",
        "cpu_model": str(cpu) if cpu else None,
        "input": {
            "shape": list(inp.shape),
            "dtype": inp.dtype,
            "color": "grayscale" if channels == 1 else "rgb",
            "quantization": quant(inp),
        },
        "output": {
            "size": out.size,
            "num_classes": OutputSpec(out.size, out.dtype).num_classes,
            "dtype": out.dtype,
            "quantization": quant(out),
            "activation": manifest.get("output", {}).get("activation", "auto"),
        },
        "labels": {"count": len(found), "source": found.source, "first": list(found.names[:5])} if found else None,
        "preprocess": dict(manifest.get("preprocess", {})),
    }


def _format_info(facts: dict[str, Any]) -> str:
    if "not_a_classifier" in facts:
        return "\n".join(
            [
                f"model     {facts['path']} ({facts['size_bytes'] / 1024:.1f} KiB)",
                f"kind      NOT an image classifier: {facts['not_a_classifier']}; edgecls classify and run refuse it",
                *(f"input     {t['shape']} {t['dtype']}" for t in facts["inputs"]),
                *(f"output    {t['shape']} {t['dtype']}" for t in facts["outputs"]),
                "ops       " + (", ".join(f"{name} x{n}" for name, n in facts["ops"].items()) or "unknown"),
                "metadata  " + (", ".join(facts["metadata_files"]) or "none"),
            ]
        )
    inp, out = facts["input"], facts["output"]
    quant = inp["quantization"]
    q = f", scale {quant['scale']:.6g}, zero point {quant['zero_point']}" if quant else ""
    oq = out["quantization"]
    oqs = f", scale {oq['scale']:.6g}, zero point {oq['zero_point']}" if oq else ""
    labels = facts["labels"]
    lines = [
        f"model     {facts['path']} ({facts['size_bytes'] / 1024:.1f} KiB)",
        f"backend   {facts['backend']['name']} {facts['backend']['version']}"
        + (f", {facts['backend']['num_threads']} threads" if facts["backend"]["num_threads"] else ""),
        f"input     {inp['shape']} {inp['dtype']} {inp['color']}{q}",
        f"output    {out['size']} values {out['dtype']} -> {out['num_classes']} classes{oqs}",
        "labels    " + (_labels_line(labels) if labels else "none found"),
        "preproc   " + ", ".join(f"{k}={v}" for k, v in facts["preprocess"].items() if v is not None),
        "ops       " + (", ".join(f"{name} x{n}" for name, n in facts["ops"].items()) or "unknown"),
        "metadata  " + (", ".join(facts["metadata_files"]) or "none"),
    ]
    if facts["delegate"]:
        lines.insert(2, f"delegate  {facts['delegate']['kind']} {facts['delegate']['library']}")
    if facts["manifest"]:
        prov = facts["manifest"].get("provenance", {})
        lines.append("manifest  edgecls" + (f", trained {prov.get('created', '?')}" if prov else ""))
    return "\n".join(lines)


def _labels_line(labels: dict[str, Any]) -> str:
    """How many labels, from where, and the first ones: "..." only where more follow."""
    more = ", ..." if labels["count"] > len(labels["first"]) else ""
    return f"{labels['count']} from {labels['source']}: {', '.join(labels['first'])}{more}"


@app.command(
    rich_help_panel=DEVICE,
    epilog=examples(
        "edgecls classify model.tflite photo.jpg",
        "edgecls classify model.tflite photos/ 'shots/*.png' --top-k 3 --json",
        "edgecls classify model_edgetpu.tflite cat.jpg --delegate edgetpu",
    ),
)
def classify(
    model: ModelArg,
    images: Annotated[list[str], typer.Argument(help="Image files, directories or glob patterns.", show_default=False)],
    labels: LabelsOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many classes to show per image.")] = 5,
    threshold: ThresholdOpt = 0.0,
    threads: ThreadsOpt = None,
    backend: BackendOpt = BackendChoice.auto,
    delegate: DelegateOpt = None,
    device: DeviceOpt = None,
    delegate_option: DelegateOptionOpt = None,
    allow_cpu_fallback: FallbackOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Classify image files; a bad image is reported and the batch goes on (exit code 1 if any failed)."""
    from edgecls.model.images import expand_image_paths

    with project_errors():
        clf = _open_classifier(
            model,
            labels=labels,
            threads=threads,
            backend=backend,
            delegate=delegate,
            device=device,
            delegate_option=delegate_option,
            allow_cpu_fallback=allow_cpu_fallback,
        )
    failed = total = 0
    with clf:
        for path in expand_image_paths(images):
            total += 1
            try:
                preds = clf.classify(path, top_k=top_k, threshold=threshold)
            except EdgeclsError as exc:
                failed += 1
                error(str(exc))
                if json_out:
                    typer.echo(json.dumps({"path": str(path), "error": str(exc)}))
                continue
            latency = round(clf.last_timing.total_ms, 3) if clf.last_timing else None
            if json_out:
                record = {
                    "path": str(path),
                    "predictions": [{"index": p.index, "label": p.label, "score": round(p.score, 6)} for p in preds],
                    "latency_ms": latency,
                }
                typer.echo(json.dumps(record))
            else:
                shown = "  ".join(f"{p.label} ({p.score:.3f})" for p in preds) or "(no class above threshold)"
                typer.echo(f"{path}: {shown}  [{latency:.1f} ms]")
    if total == 0:
        error("no images found in " + " ".join(images))
        raise typer.Exit(code=1)
    if failed:
        error(f"{failed} of {total} images failed")
        raise typer.Exit(code=1)


ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="A device profile (see `edgecls profiles`) or a .toml path; flags override it."),
]

# `edgecls run`'s help panels, one per configuration object its options fill (edgecls.cli.run builds them once):
# SourceConfig, ClassifierConfig, Smoothing, StreamConfig's limits, the output (OutputOptions and SinkOptions'
# on_change), SinkOptions' mqtt and preview parts, and the collector's CollectPolicy.
SOURCE_PANEL, MODEL_PANEL, SMOOTHING_PANEL, LIMITS_PANEL = "Source", "Model", "Decision smoothing", "Limits"
OUTPUT_PANEL, MQTT_PANEL, PREVIEW_PANEL, FIELD_PANEL = "Output", "MQTT and Home Assistant", "Dashboard", "Field data"


def _in_panel(option: Any, panel: str) -> Any:
    """A shared option (``Annotated[type, typer.Option(...)]``) shown in ``panel`` of this command's help."""
    import copy
    import typing

    kind, info = typing.get_args(option)[:2]
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[kind, info]


@app.command(
    rich_help_panel=DEVICE,
    epilog=examples(
        "edgecls run model.tflite --source picam",
        "edgecls run model.tflite --source 0 --sink jsonl:results.jsonl",
        "edgecls run model.tflite --profile rpi5 --sink mqtt://broker.local/pi/vision --mqtt-discovery",
        "edgecls run model.tflite --source clip.mp4 --sink preview:8080",
        "edgecls run model.tflite --source picam --collect field/",
    ),
)
def run(
    model: ModelArg,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            "-s",
            help="picam, picam:N, a camera index or /dev/videoN, a video file, an rtsp:// or http:// URL, a GStreamer "
            "pipeline, an image, a folder or glob of images, or demo (default: the profile's camera); imx500 or "
            "imx500:RPK runs the network on the AI Camera's sensor (MODEL: the run folder, its model.tflite or "
            "the .rpk).",
            rich_help_panel=SOURCE_PANEL,
        ),
    ] = None,
    profile: ProfileOpt = None,
    labels: _in_panel(LabelsOpt, MODEL_PANEL) = None,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, help="Predictions per result.", rich_help_panel=MODEL_PANEL)
    ] = 3,
    threshold: _in_panel(ThresholdOpt, MODEL_PANEL) = 0.0,
    threads: _in_panel(ThreadsOpt, MODEL_PANEL) = None,
    backend: Annotated[
        BackendChoice | None,
        typer.Option("--backend", help="Interpreter backend \\[default: auto].", rich_help_panel=MODEL_PANEL),
    ] = None,
    delegate: _in_panel(DelegateOpt, MODEL_PANEL) = None,
    device: _in_panel(DeviceOpt, MODEL_PANEL) = None,
    delegate_option: _in_panel(DelegateOptionOpt, MODEL_PANEL) = None,
    allow_cpu_fallback: _in_panel(FallbackOpt, MODEL_PANEL) = False,
    sink: Annotated[
        list[str] | None,
        typer.Option(
            "--sink",
            help="Also send results to jsonl:PATH, mqtt://\\[user:pass@]host[:port]/topic, "
            "video:PATH or preview:[HOST:]PORT (repeatable).",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per result on stdout.", rich_help_panel=OUTPUT_PANEL)
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stdout (sinks only).", rich_help_panel=OUTPUT_PANEL)
    ] = False,
    on_change: Annotated[
        bool,
        typer.Option("--on-change", help="Emit only when the decided label changes.", rich_help_panel=OUTPUT_PANEL),
    ] = False,
    fps: Annotated[
        float | None,
        typer.Option("--fps", min=0.01, help="Classify at most this many frames/s.", rich_help_panel=LIMITS_PANEL),
    ] = None,
    max_frames: Annotated[
        int | None,
        typer.Option("--max-frames", min=1, help="Stop after N results.", rich_help_panel=LIMITS_PANEL),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.01, help="Stop after S seconds.", rich_help_panel=LIMITS_PANEL),
    ] = None,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop", help="Start a video file or image folder over at its end.", rich_help_panel=SOURCE_PANEL
        ),
    ] = False,
    ema: Annotated[
        float | None,
        typer.Option(
            "--ema",
            min=0.01,
            max=1.0,
            help="Moving-average weight of the newest frame (1: off) \\[default: 1].",
            rich_help_panel=SMOOTHING_PANEL,
        ),
    ] = None,
    hold: Annotated[
        int | None,
        typer.Option(
            "--hold",
            min=1,
            help="Frames a new label must lead before the decision switches \\[default: 1].",
            rich_help_panel=SMOOTHING_PANEL,
        ),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            "--margin",
            min=0.01,
            max=1.0,
            help="...or lead by this much to switch at once.",
            rich_help_panel=SMOOTHING_PANEL,
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help="Below this, no decision \\[default: 0].",
            rich_help_panel=SMOOTHING_PANEL,
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", min=16, help="Camera frame width to ask for.", rich_help_panel=SOURCE_PANEL),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option("--height", min=16, help="Camera frame height to ask for.", rich_help_panel=SOURCE_PANEL),
    ] = None,
    camera_fps: Annotated[
        float | None,
        typer.Option("--camera-fps", min=1, help="Camera frame rate to ask for.", rich_help_panel=SOURCE_PANEL),
    ] = None,
    mqtt_qos: Annotated[
        int, typer.Option("--mqtt-qos", min=0, max=2, help="MQTT quality of service.", rich_help_panel=MQTT_PANEL)
    ] = 0,
    mqtt_retain: Annotated[
        bool,
        typer.Option("--mqtt-retain", help="Publish MQTT results as retained.", rich_help_panel=MQTT_PANEL),
    ] = False,
    mqtt_discovery: Annotated[
        bool,
        typer.Option(
            "--mqtt-discovery",
            help="Announce the camera to Home Assistant (MQTT discovery): a device with a label sensor and an online sensor.",
            rich_help_panel=MQTT_PANEL,
        ),
    ] = False,
    mqtt_discovery_prefix: Annotated[
        str,
        typer.Option("--mqtt-discovery-prefix", help="Home Assistant's discovery prefix.", rich_help_panel=MQTT_PANEL),
    ] = "homeassistant",
    mqtt_discovery_node_id: Annotated[
        str | None,
        typer.Option(
            "--mqtt-discovery-node-id",
            help="The device's id in Home Assistant (default: from the topic, one per topic).",
            show_default=False,
            rich_help_panel=MQTT_PANEL,
        ),
    ] = None,
    stats_every: Annotated[
        float | None,
        typer.Option(
            "--stats-every",
            min=0.1,
            help="A JSON line of live statistics on stderr every S seconds.",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = None,
    preview_token: Annotated[
        str | None,
        typer.Option(
            "--preview-token",
            envvar="EDGECLS_PREVIEW_TOKEN",
            show_envvar=True,
            help="Token the dashboard (preview:HOST:PORT) asks for when it listens beyond 127.0.0.1.",
            show_default=False,
            rich_help_panel=PREVIEW_PANEL,
        ),
    ] = None,
    preview_host: Annotated[
        list[str] | None,
        typer.Option(
            "--preview-host",
            help="Another name the dashboard answers to, e.g. raspberrypi.local (it answers to localhost, its addresses and the HOST of preview:HOST:PORT; other Host headers get 403, against DNS rebinding); repeatable.",
            show_default=False,
            rich_help_panel=PREVIEW_PANEL,
        ),
    ] = None,
    collect: Annotated[
        Path | None,
        typer.Option(
            "--collect",
            help="Keep the frames worth a look (unsure, label changes, a sample) in DIR/<predicted label>/ with JSON sidecars, for relabelling and convert --extra-data.",
            rich_help_panel=FIELD_PANEL,
        ),
    ] = None,
    collect_below: Annotated[
        float,
        typer.Option(
            "--collect-below", min=0.0, max=1.0, help="Unsure: top score under this.", rich_help_panel=FIELD_PANEL
        ),
    ] = 0.6,
    collect_margin: Annotated[
        float,
        typer.Option(
            "--collect-margin", min=0.0, max=1.0, help="Unsure: the top two within this.", rich_help_panel=FIELD_PANEL
        ),
    ] = 0.1,
    collect_sample: Annotated[
        float,
        typer.Option(
            "--collect-sample",
            min=0.0,
            max=1.0,
            help="Share of the other frames kept at random.",
            rich_help_panel=FIELD_PANEL,
        ),
    ] = 0.01,
    collect_every: Annotated[
        float,
        typer.Option(
            "--collect-every", min=0.0, help="At most one frame every S seconds.", rich_help_panel=FIELD_PANEL
        ),
    ] = 1.0,
    collect_max: Annotated[
        str,
        typer.Option(
            "--collect-max",
            help="Frames (500) or size (200MB) to keep; the oldest go first.",
            rich_help_panel=FIELD_PANEL,
        ),
    ] = "1000",
) -> None:
    """Classify a live camera, video or stream; Ctrl-C or SIGTERM stops it cleanly with every sink flushed."""
    from edgecls.cli.run import OutputOptions, open_classifier, run_stream
    from edgecls.live.smoothing import Smoothing
    from edgecls.live.sources import SourceConfig
    from edgecls.live.stream import StreamConfig
    from edgecls.model.classifier import ClassifierConfig
    from edgecls.sinks.spec import MqttSinkOptions, PreviewSinkOptions, SinkOptions, VideoSinkOptions, sink_needs_frames

    with project_errors():
        # The one place the options become configuration; unset ones stay None for the profile to fill.
        sinks = tuple(sink or ())
        config = StreamConfig(
            source=SourceConfig(source, width=width, height=height, fps=camera_fps, loop=loop),
            classifier=ClassifierConfig(
                labels=labels,
                num_threads=threads,
                delegate=delegate,
                device=device,
                delegate_options=parse_key_values(delegate_option, "--delegate-option") or None,
                allow_cpu_fallback=allow_cpu_fallback,
                backend=backend.value if backend is not None else None,
                top_k=top_k,
                threshold=threshold,
            ),
            smoothing=Smoothing(alpha=ema, hold=hold, margin=margin, min_score=min_score),
            fps=fps,
            max_frames=max_frames,
            duration=duration,
            keep_frames=collect is not None or any(sink_needs_frames(spec) for spec in sinks),
        )
        sink_options = SinkOptions(
            on_change=on_change,
            mqtt=MqttSinkOptions(qos=mqtt_qos, retain=mqtt_retain),
            preview=PreviewSinkOptions(token=preview_token, hosts=tuple(preview_host or ())),
            video=VideoSinkOptions(fps=fps or 30.0),
        )
        output = OutputOptions(
            sinks=sinks,
            json_lines=json_out,
            quiet=quiet,
            stats_every=stats_every,
            collect=str(collect) if collect is not None else None,
            collect_policy=_collect_policy(collect_below, collect_margin, collect_sample, collect_every, collect_max),
            mqtt_discovery=mqtt_discovery_prefix if mqtt_discovery else None,
            mqtt_discovery_node_id=mqtt_discovery_node_id,
        )
        if profile is not None:
            from edgecls.device.profiles import load_profile

            config = load_profile(profile).apply(config)
        elif source is None:
            from edgecls.errors import ConfigError

            raise ConfigError("no --source given; pass --source (e.g. picam, 0, video.mp4) or --profile NAME")
        code = run_stream(open_classifier(model, config), config, sink_options, output, out=sys.stdout, err=sys.stderr)
    raise typer.Exit(code=code)


@app.command(rich_help_panel=SHIP, epilog=examples("edgecls profiles", "edgecls profiles rpi5"))
def profiles(
    name: Annotated[str | None, typer.Argument(help="Show this profile in full (TOML) and its boot lines.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the device profiles (bundled and in EDGECLS_PROFILE_PATH), or show one."""
    from edgecls.device.profiles import list_profiles, load_profile

    with project_errors():
        if name is not None:
            prof = load_profile(name)
            if json_out:
                typer.echo(json.dumps({"name": prof.name, "path": str(prof.path), **prof.data}, indent=2))
            else:
                typer.echo(
                    f"# {prof.path}\n{prof.to_toml()}\n# boot configuration fragment:\n{prof.boot_fragment()}", nl=False
                )
            return
        found = list_profiles()
    if json_out:
        typer.echo(json.dumps([{"name": p.name, "path": str(p.path), **p.data} for p in found], indent=2))
        return
    width = max(len(p.name) for p in found)
    for p in found:
        runtime = p.runtime
        accel = f"edgetpu {runtime.get('device', '')}".strip() if runtime.get("delegate") == "edgetpu" else "cpu"
        accel = "imx500 sensor" if p.camera["source"].partition(":")[0] == "imx500" else accel
        typer.echo(f"{p.name:<{width}}  {p.camera['source']:<11} {accel:<14} {p.description}")


class CheckTarget(str, Enum):
    edgetpu = "edgetpu"


@app.command(rich_help_panel=INSPECT, epilog=examples("edgecls check model.tflite --target edgetpu"))
def check(
    model: ModelArg,
    target: Annotated[
        CheckTarget, typer.Option("--target", help="The accelerator to check against.")
    ] = CheckTarget.edgetpu,
    json_out: JsonOpt = False,
) -> None:
    """Predict, without compiling, whether a model will run on an accelerator, and the first op that will not.

    Exit code 0 when every op maps to the target, 3 when some will not, 1 on an error.
    """
    from edgecls.device.edgetpu import preflight

    with project_errors():
        report = preflight(model)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(_format_check(report))
    raise typer.Exit(code=0 if report.ok else EXIT_VERDICT)


def _format_check(report: Any) -> str:
    from collections import Counter

    total = len(report.ops)
    verdicts = {
        "compiled": "already compiled for the Edge TPU",
        "pass": f"every op ({total}) will run on the Edge TPU"
        if not report.cpu_ops
        else f"{report.edgetpu_ops} of {total} ops will run on the Edge TPU; the other {report.cpu_ops} convert float "
        "input or output at the edges",
        "partial": f"{report.edgetpu_ops} of {total} ops will run on the Edge TPU",
        "fail": "the Edge TPU compiler will not map this model",
    }
    lines = [f"model     {report.model}", f"target    edgetpu: {report.status}, {verdicts[report.status]}"]
    lines += [f"problem   {p}" for p in report.problems]
    first = report.first_cpu_op
    if first is not None and report.status != "compiled":
        lines.append(f"first CPU op #{first.index} {first.op}: {first.reason}; every op after it runs on the CPU too")
    for side, on_tpu in (("edgetpu", True), ("cpu", False)):
        counts = Counter(v.op for v in report.ops if v.on_edgetpu == on_tpu)
        if counts:
            lines.append(f"{side:<9} " + ", ".join(f"{op} x{n}" for op, n in counts.most_common()))
    lines += [f"note      {n}" for n in report.notes]
    return "\n".join(lines)


@app.command(
    rich_help_panel=INSPECT,
    epilog=examples("edgecls bench model.tflite", "edgecls bench model.tflite --threads 3 --budget-ms 50 --json"),
)
def bench(
    model: ModelArg,
    threads: ThreadsOpt = None,
    backend: BackendOpt = BackendChoice.auto,
    delegate: DelegateOpt = None,
    device: DeviceOpt = None,
    delegate_option: DelegateOptionOpt = None,
    allow_cpu_fallback: FallbackOpt = False,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed classifications.")] = 200,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed classifications first.")] = 20,
    image: Annotated[
        Path | None, typer.Option("--image", help="Classify this image (default: a random 640x480 camera frame).")
    ] = None,
    budget_ms: Annotated[
        float | None, typer.Option("--budget-ms", min=0.0, help="Exit code 3 when p90 latency is over this.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure latency (p50/p90/p99, split into preprocess, invoke, postprocess) and throughput on this machine."""
    from edgecls.device.bench import benchmark

    with project_errors():
        clf = _open_classifier(
            model,
            threads=threads,
            backend=backend,
            delegate=delegate,
            device=device,
            delegate_option=delegate_option,
            allow_cpu_fallback=allow_cpu_fallback,
        )
        with clf:
            frame = None
            if image is not None:
                from edgecls.model.images import read_image

                frame = read_image(image)
            result = benchmark(clf, runs=runs, warmup=warmup, frame=frame, budget_ms=budget_ms)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        facts = result.to_dict()
        accel = facts["delegate"]["kind"] if facts["delegate"] else "cpu"
        typer.echo(
            f"model     {result.model}\n"
            f"runtime   {facts['backend']['name']} {facts['backend']['version']}, {facts['backend']['num_threads']} "
            f"thread(s), {accel}; {runs} runs after {warmup} warm-up; frame {result.frame[0]}x{result.frame[1]}"
        )
        typer.echo(f"{'ms':<12}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}")
        for part in ("preprocess", "invoke", "postprocess", "total"):
            s = getattr(result, part)
            typer.echo(f"{part:<12}{s.p50:>9.3f}{s.p90:>9.3f}{s.p99:>9.3f}{s.mean:>9.3f}")
        typer.echo(f"throughput {result.throughput_fps:.1f} classifications/s")
    if result.within_budget is False:
        error(f"p90 latency {result.total.p90:.2f} ms is over the budget of {budget_ms:g} ms")
        raise typer.Exit(code=EXIT_VERDICT)


@app.command(rich_help_panel=INSPECT, epilog=examples("edgecls doctor", "edgecls doctor --json"))
def doctor(json_out: JsonOpt = False) -> None:
    """Check this machine for running classifiers, and print the command that fixes each problem.

    Python, interpreter backends, numpy, OpenCV, picamera2, the Edge TPU runtime and devices, cameras. Exit code 1
    if something needed is broken.
    """
    from edgecls.convert.imx500_env import doctor_check
    from edgecls.device.doctor import FAIL, diagnose

    findings = diagnose(extra=[doctor_check])
    if json_out:
        typer.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "--  "}
        for f in findings:
            typer.echo(f"{marks[f.status]}  {f.check:<22} {f.detail}")
            if f.fix:
                typer.echo(f"{'':<28} fix: {f.fix}")
    if any(f.status == FAIL for f in findings):
        raise typer.Exit(code=1)


@app.command(
    rich_help_panel=SHIP,
    epilog=examples(
        "edgecls deploy model.tflite --profile rpi5 --out pi.tar.gz",
        "edgecls deploy model.tflite --profile rpi4-coral-usb --out pi.tar.gz --sink mqtt://broker.local/pi/vision",
    ),
)
def deploy(
    model: ModelArg,
    profile: Annotated[str, typer.Option("--profile", help="Device profile name or .toml path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle to write (.tar.gz).")],
    sink: Annotated[
        list[str] | None, typer.Option("--sink", help="Result sinks for the service (repeatable, as for run).")
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Install folder on the device.")] = "/opt/edgecls",
    user: Annotated[
        str, typer.Option("--user", help="System user the service runs as (created if missing).")
    ] = "edgecls",
    wheel: Annotated[
        Path | None,
        typer.Option("--wheel", help="The edgecls wheel to bundle (default: built from this checkout)."),
    ] = None,
    wheelhouse: Annotated[
        str | None,
        typer.Option(
            "--wheelhouse",
            help="Also bundle every dependency's aarch64 wheel for an offline device: "
            "bookworm (Python 3.11) or trixie (Python 3.13).",
        ),
    ] = None,
    pip_spec: Annotated[
        str | None,
        typer.Option("--pip-spec", help="Have the device's pip install this from your own index instead of the wheel."),
    ] = None,
    mqtt_discovery: Annotated[
        bool, typer.Option("--mqtt-discovery", help="The service announces the camera to Home Assistant (as for run).")
    ] = False,
    mqtt_discovery_prefix: Annotated[
        str, typer.Option("--mqtt-discovery-prefix", help="Home Assistant's discovery prefix.")
    ] = "homeassistant",
    mqtt_discovery_node_id: Annotated[
        str | None,
        typer.Option(
            "--mqtt-discovery-node-id",
            help="The device's id in Home Assistant (default: from the topic, one per topic).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Bundle a model for a device: model (+ Edge TPU build), labels, profile, boot lines, systemd unit, install script
    and the edgecls wheel. An MQTT password in a --sink URL is left out: the device's install.sh takes it."""
    from edgecls.device.deploy import build_bundle
    from edgecls.device.profiles import load_profile
    from edgecls.sinks.hass import discovery_for

    with project_errors():
        discovery = discovery_for(mqtt_discovery, prefix=mqtt_discovery_prefix, node_id=mqtt_discovery_node_id)
        bundle = build_bundle(
            model,
            load_profile(profile),
            out,
            sinks=list(sink or []),
            prefix=prefix,
            user=user,
            pip_spec=pip_spec,
            wheel=wheel,
            wheelhouse=wheelhouse,
            discovery=discovery,
        )
    for warning in bundle.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {bundle.path} ({bundle.path.stat().st_size / 1024:.1f} KiB): {', '.join(sorted(bundle.files))}")
    typer.echo(f"on the device: tar xzf {bundle.path.name} && cd {bundle.root} && sudo ./install.sh")


@app.command(
    "mqtt-clear",
    rich_help_panel=SHIP,
    epilog=examples(
        "edgecls mqtt-clear --sink mqtt://broker.local/pi/vision --mqtt-discovery",
        "edgecls mqtt-clear --sink mqtt://pi@broker.local/pi/vision --mqtt-retain",
    ),
)
def mqtt_clear(
    sink: Annotated[
        list[str],
        typer.Option(
            "--sink",
            help="An MQTT sink of the run, mqtt://\\[user:pass@]host[:port]/topic (repeatable); a password may come from EDGECLS_MQTT_PASSWORD.",
            show_default=False,
        ),
    ],
    mqtt_discovery: Annotated[
        bool,
        typer.Option(
            "--mqtt-discovery", help="Also the Home Assistant discovery configs (the device leaves Home Assistant)."
        ),
    ] = False,
    mqtt_discovery_prefix: Annotated[
        str, typer.Option("--mqtt-discovery-prefix", help="Home Assistant's discovery prefix, as the run had it.")
    ] = "homeassistant",
    mqtt_discovery_node_id: Annotated[
        str | None,
        typer.Option(
            "--mqtt-discovery-node-id", help="The device's id in Home Assistant, as the run had it.", show_default=False
        ),
    ] = None,
    mqtt_retain: Annotated[
        bool, typer.Option("--mqtt-retain", help="Also the last result (a run with --mqtt-retain).")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for each broker.")] = 5.0,
) -> None:
    """Take off the broker what `edgecls run` left retained there: its TOPIC/status message and, with --mqtt-discovery,
    the Home Assistant configs. `install.sh --uninstall` runs it. Exit code 1 when a broker could not be cleared."""
    from edgecls.sinks.hass import discovery_for
    from edgecls.sinks.mqtt import clear_retained, parse_mqtt_url

    with project_errors():
        discovery = discovery_for(mqtt_discovery, prefix=mqtt_discovery_prefix, node_id=mqtt_discovery_node_id)
        for url in sink:
            parse_mqtt_url(url)  # every sink is checked before any broker is touched
    failed = 0
    for url in sink:
        try:
            cleared = clear_retained(url, discovery=discovery, results=mqtt_retain, timeout=timeout)
        except EdgeclsError as exc:
            failed += 1
            error(str(exc))
            continue
        host, port = parse_mqtt_url(url)[:2]
        typer.echo(f"cleared {len(cleared)} retained topic(s) on {host}:{port}: {', '.join(cleared)}")
    if failed:
        raise typer.Exit(code=1)


def _collect_policy(below: float, margin: float, sample: float, every: float, most: str) -> Any:
    from edgecls.sinks.collect import CollectPolicy, parse_max

    max_files, max_bytes = parse_max(most)
    return CollectPolicy(
        below=below, margin=margin, sample=sample, every_s=every, max_files=max_files, max_bytes=max_bytes
    )


_own = app
del app  # from here on `app` is the whole app, with the workstation's commands: see __getattr__


def _app_of(commands: list[Any]) -> typer.Typer:
    """An app with the options before the command (``-v``, ``--version``) and these commands."""
    new = typer.Typer(**_SETTINGS)
    new.callback()(_main)
    new.registered_commands.extend(commands)
    return new


def _register_host_commands(target: typer.Typer) -> None:
    """The workstation's commands, from `edgecls.convert.cli` (TensorFlow loads only when one runs, and where it is
    not installed the command says which extra to install)."""
    from edgecls.convert.cli import CONVERT_EXAMPLES, TUNE_EXAMPLES, cache_app, convert, tune

    target.command("convert", rich_help_panel=HOST, epilog=CONVERT_EXAMPLES)(convert)
    target.command("tune", rich_help_panel=HOST, epilog=TUNE_EXAMPLES)(tune)
    target.add_typer(cache_app, name="cache", rich_help_panel=HOST)
    from edgecls.convert.cli_export import export_app

    target.add_typer(export_app, name="export", rich_help_panel=HOST)


@functools.cache
def _whole_app() -> typer.Typer:
    """Every command, the workstation's too, made on first use: importing those would cost every device command
    15 ms (much more on a Pi Zero) for nothing."""
    whole = _app_of(_own.registered_commands)
    _register_host_commands(whole)
    return whole


def __getattr__(name: str) -> Any:
    if name == "app":  # `from edgecls.cli.app import app` (tests, Typer's own tools): the whole app
        return _whole_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app_for(args: list[str]) -> typer.Typer:
    """The app that runs ``args``: for a command defined here, one holding only that command (before it parses
    anything, Typer turns every parameter of every command it holds into an option, 30 to 50 ms for all of them
    with run's and convert's dozens); the whole app for anything else (help, completion, a workstation command, a
    mistyped name that deserves the suggestions). The options before the command (``-v``, ``--version``) take no
    value, so the first argument that is not an option names the command."""
    if "--" in args or "_EDGECLS_COMPLETE" in os.environ:  # shell completion asks through this variable
        return _whole_app()
    name = next((arg for arg in args if not arg.startswith("-")), None)
    if name is None or "--help" in args[: args.index(name)]:  # `edgecls --help run`: the app's help, every command
        return _whole_app()
    chosen = [c for c in _own.registered_commands if _command_name(c) == name]
    return _app_of(chosen) if chosen else _whole_app()


def _command_name(info: Any) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)


def main() -> None:
    """Console-script entry point (an interrupt before a command has set up its own handling is exit 130 too)."""
    try:
        _app_for(sys.argv[1:])()
    except KeyboardInterrupt:
        interrupted()
        sys.exit(130)
    except SystemExit as exc:  # Typer turns an interrupt outside our own handling into a silent exit 130
        if exc.code == 130:
            interrupted()
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
