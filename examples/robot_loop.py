"""A robot control loop that reacts to a decided label, with hysteresis so one odd frame never flips behaviour.

The control loop runs at its own fixed rate and never waits for the camera: it polls `stream.latest()`, which
returns at once. Replace `Robot` with your motor or behaviour code.

    python examples/robot_loop.py model.tflite --source 0 [--seconds 30]
    python examples/robot_loop.py model.tflite --source demo --seconds 3     # no camera needed
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import ClassVar

import edgecls


class Robot:
    """Stand-in for real actuators: maps a decided label to a behaviour and logs transitions."""

    BEHAVIOURS: ClassVar[dict[str, str]] = {
        "person": "stop",
        "stop sign": "stop",
        "circle": "turn left",
        "square": "turn right",
    }

    def __init__(self) -> None:
        self.behaviour = "cruise"

    def react(self, label: str | None) -> None:
        behaviour = self.BEHAVIOURS.get(label or "", "cruise")
        if behaviour != self.behaviour:
            print(f"{time.strftime('%H:%M:%S')}  saw {label!r:16} -> {behaviour}", flush=True)
            self.behaviour = behaviour

    def step(self) -> None:
        """One control tick (drive motors, read sensors ...)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--source", default="0")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run forever)")
    parser.add_argument("--rate", type=float, default=20.0, help="control loop frequency in Hz")
    args = parser.parse_args()

    robot = Robot()
    # hold=5: a new label must lead five frames in a row; margin=0.4: or lead clearly, to react at once.
    smoothing = edgecls.Smoothing(alpha=0.5, hold=5, margin=0.4, min_score=0.3)
    try:
        top = edgecls.ClassifierConfig(top_k=1)
        with edgecls.Stream(args.model, args.source, classifier=top, smoothing=smoothing, keep_frames=False) as stream:
            deadline = time.monotonic() + args.seconds if args.seconds else None
            period = 1.0 / args.rate
            seen = -1
            while deadline is None or time.monotonic() < deadline:
                tick = time.monotonic()
                result = stream.latest()  # never blocks; raises if the camera failed for good
                if result is not None and result.sequence != seen:
                    seen = result.sequence
                    robot.react(result.decision.label)
                robot.step()
                time.sleep(max(0.0, period - (time.monotonic() - tick)))
            stats = stream.stats()
    except edgecls.EdgeclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"classified {stats.frames_processed} frames at {stats.fps:.1f} fps; final behaviour: {robot.behaviour}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
