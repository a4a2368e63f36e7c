"""Live classification on a Raspberry Pi camera: print each change of the decided label, optionally to MQTT too.

    # edgecls is not on PyPI: build its wheel in the checkout (pip wheel --no-deps -w dist .) and copy it over,
    # or let `edgecls deploy` make a bundle whose install.sh does all of this for a service.
    sudo apt install python3-picamera2                  # picamera2 comes from Raspberry Pi OS, not pip
    python3 -m venv --system-site-packages .venv
    # keep the system's numpy in the venv: picamera2's companions are built against it (numpy 1.24 on bookworm)
    python3 -c 'import numpy; print("numpy==" + numpy.__version__)' > keep-numpy.txt
    .venv/bin/pip install -c keep-numpy.txt 'edgecls-0.1.0-py3-none-any.whl[camera,mqtt]'
    .venv/bin/python examples/pi_live.py model.tflite [--profile rpi5] [--mqtt mqtt://broker.local/pi/vision]

--profile takes the board's camera settings, threads, delegate and smoothing from a device profile
(edgecls profiles lists them; rpi4-coral-usb runs on a Coral USB Accelerator).

--source demo (or a USB camera index, or a video file) runs it anywhere.
"""

from __future__ import annotations

import argparse
import signal
import sys

import edgecls
from edgecls.sinks.mqtt import MqttSink


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--profile", help="device profile: rpi5, rpi4, rpi4-coral-usb, ... or a .toml file")
    parser.add_argument("--source", help="picam (default), picam:1, 0, a video file, demo ... (overrides the profile)")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: cores, max 4)")
    parser.add_argument("--mqtt", help="also publish changes to this mqtt://host[:port]/topic")
    parser.add_argument("--max-frames", type=int, default=None)
    args = parser.parse_args()

    try:
        profile = edgecls.load_profile(args.profile) if args.profile else None
        config = edgecls.StreamConfig(
            source=edgecls.SourceConfig(args.source or (None if profile else "picam")),
            classifier=edgecls.ClassifierConfig(num_threads=args.threads, top_k=1),
            # A label must lead 3 frames in a row (or by 0.3) before the decision switches; scores are averaged a little.
            smoothing=edgecls.Smoothing()
            if profile
            else edgecls.Smoothing(alpha=0.6, hold=3, margin=0.3, min_score=0.4),
            max_frames=args.max_frames,
            keep_frames=False,
        )
        if profile:  # the board's camera, threads, delegate and smoothing, where the options above left them unset
            config = profile.apply(config)
        stream = edgecls.Stream.from_config(
            args.model, config, on_event=lambda e: print(f"[{e.kind}] {e.message}", file=sys.stderr)
        )
        mqtt = MqttSink(args.mqtt, on_change=True) if args.mqtt else None
    except edgecls.EdgeclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The script, not the library, decides what a signal means: here, stop the stream cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stream.stop())
    signal.signal(signal.SIGINT, lambda *_: stream.stop())
    try:
        with stream:
            for result in stream:
                if result.decision.changed:
                    label = result.decision.label or "(unsure)"
                    print(f"{label:30s} {result.decision.score:.2f}  {result.latency.total_ms:5.1f} ms", flush=True)
                if mqtt:
                    mqtt.write(result)
            stats = stream.stats()
    except edgecls.EdgeclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if mqtt:
            mqtt.close()
    print(f"{stats.frames_processed} frames, {stats.fps:.1f} fps, {stats.frames_dropped} dropped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
